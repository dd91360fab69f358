//! SOPS files in renders: a plain-YAML app's encrypted manifests decrypted in memory; for a
//! kustomization, the encrypted files it names (resources, generators' `files` and `envs`)
//! decrypted into a private copy of the checkout that kustomize builds, removed afterwards
//! (also on error). Each file is opened only with the keys its unit may use.

use std::path::{Path, PathBuf};

use crate::sops::KeyRing;

/// Whether a file's text is SOPS-encrypted (YAML, JSON or dotenv).
pub(crate) fn is_sops_text(text: &str) -> bool {
    text.contains("ENC[AES256_GCM,")
        && (text.contains("sops:")
            || text.contains("\"sops\"")
            || crate::sops::is_encrypted_dotenv(text))
}

/// The plaintext of an encrypted file, in its own format (YAML, JSON or dotenv); `rel` names it
/// in errors.
pub(crate) fn decrypt_text(
    text: &str,
    rel: &str,
    ring: &Result<KeyRing, String>,
) -> Result<String, String> {
    let fail = |why: String| format!("{rel}: cannot decrypt: {why}");
    let ring = ring.as_ref().map_err(|why| fail(why.clone()))?;
    if crate::sops::is_encrypted_dotenv(text) {
        return crate::sops::decrypt_dotenv(text, ring).map_err(fail);
    }
    let json = rel.ends_with(".json");
    let doc = if json {
        serde_json::from_str(text).map_err(|e| fail(format!("not JSON: {e}")))?
    } else {
        crate::yaml::Node::parse(text, rel)
            .map_err(|d| fail(d.to_string()))?
            .to_json()
    };
    let plain = crate::sops::decrypt_document(doc, ring).map_err(fail)?;
    if json {
        serde_json::to_string_pretty(&plain).map_err(|e| fail(e.to_string()))
    } else {
        serde_saphyr::to_string(&plain).map_err(|e| fail(e.to_string()))
    }
}

/// A private copy of the checkout at `root` with the encrypted files among `files` decrypted,
/// when there are any: kustomize builds the copy's `dir`. `None`: nothing to decrypt.
pub(super) fn decrypted_copy(
    root: &Path,
    dir: &Path,
    files: &[PathBuf],
    ring: &Result<KeyRing, String>,
) -> Result<Option<(tempfile::TempDir, PathBuf)>, Vec<String>> {
    let mut plain = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if !is_sops_text(&text) {
            continue;
        }
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        match decrypt_text(&text, &rel, ring) {
            Ok(p) => plain.push((file.clone(), p)),
            Err(why) => problems.push(why),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if plain.is_empty() {
        return Ok(None);
    }
    let io = |e: std::io::Error| vec![format!("cannot prepare the decrypted copy: {e}")];
    // 0700, removed when dropped (on every path out of the render).
    let copy = tempfile::Builder::new()
        .prefix("flotilla-sops-")
        .tempdir()
        .map_err(io)?;
    crate::source::copy_tree(root, copy.path(), true).map_err(io)?;
    for (file, text) in plain {
        let rel = file.strip_prefix(root).unwrap_or(&file);
        let target = copy.path().join(rel);
        // Written 0600 in the private folder.
        use std::io::Write as _;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&target)
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
    }
    let inner = copy
        .path()
        .join(dir.strip_prefix(root).unwrap_or(Path::new("")));
    Ok(Some((copy, inner)))
}
