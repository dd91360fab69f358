//! Verified provenance: the signature on a commit (its `gpgsig` header) or on an annotated tag
//! (appended to the tag's message), checked against the keys a source's `verify` names. SSH
//! signatures (SSHSIG, namespace `git`) against an OpenSSH allowed-signers file, as
//! `ssh-keygen -Y verify` does; OpenPGP signatures against armored public keys. Blocking: runs
//! with the rest of a fetch's Git work.

use std::collections::BTreeMap;

use git2::{Oid, Repository};

use crate::config::{VerificationKey, Verify, VerifyMode};

/// The keys a policy names, read: `(name, key, its file's text)`. A key that cannot be read is
/// the agent's problem, not the revision's: an error, never cached as a verdict.
pub(super) fn trusted_keys<'k>(
    verify: &Verify,
    keys: &'k BTreeMap<String, VerificationKey>,
) -> Result<Vec<Trusted<'k>>, String> {
    let mut trusted = Vec::new();
    for name in &verify.keys {
        let key = keys
            .get(name)
            .ok_or_else(|| format!("no verification key named {name:?} in the agent config"))?;
        let (VerificationKey::SshAllowedSigners(file) | VerificationKey::PgpPublicKey(file)) = key;
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("verification key {name}: {}: {e}", file.display()))?;
        trusted.push((name.clone(), key, text));
    }
    Ok(trusted)
}

/// A trusted key: its name, what it is, and its file's text.
pub(super) type Trusted<'k> = (String, &'k VerificationKey, String);

/// Checks what `verify` asks of `commit` (and `tag`, the annotated tag object the ref names and
/// its name, if any) with the `trusted` keys. Returns who signed
/// (`alice@example.com (SSH SHA256:...)`), or why not.
pub(super) fn check(
    repo: &Repository,
    commit: Oid,
    tag: Option<(Oid, &str)>,
    verify: &Verify,
    trusted: &[Trusted<'_>],
) -> Result<String, String> {
    let mut signers = Vec::new();
    if matches!(verify.mode, VerifyMode::Tag | VerifyMode::TagAndHead) {
        let (tag, name) =
            tag.ok_or("verify.mode asks for a signed tag, but the ref is not an annotated tag")?;
        // The signed tag must be the one asked for and point at the commit applied: a server
        // could otherwise pair a genuinely signed tag with another name or commit.
        let object = repo
            .find_tag(tag)
            .map_err(|e| format!("tag {}: {}", short(tag), e.message()))?;
        let named = object.name().ok();
        if named != Some(name) {
            return Err(format!(
                "tag {} is named {:?}, not {name:?}",
                short(tag),
                named.unwrap_or_default()
            ));
        }
        let target = object
            .target()
            .and_then(|t| t.peel_to_commit())
            .map_err(|e| format!("tag {name}: {}", e.message()))?;
        if target.id() != commit {
            return Err(format!(
                "tag {name} points at {}, not at the commit {}",
                short(target.id()),
                short(commit)
            ));
        }
        let (signature, data) = tag_parts(repo, tag)?;
        signers.push(
            signed_by(&signature, &data, trusted)
                .map_err(|why| format!("tag {name} (commit {}): {why}", short(commit)))?,
        );
    }
    if matches!(verify.mode, VerifyMode::Head | VerifyMode::TagAndHead) {
        let (signature, data) = match repo.extract_signature(&commit, None) {
            Ok((s, d)) => (s.to_vec(), d.to_vec()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(format!("commit {} is not signed", short(commit)));
            }
            Err(e) => return Err(format!("commit {}: {}", short(commit), e.message())),
        };
        signers.push(
            signed_by(&signature, &data, trusted)
                .map_err(|why| format!("commit {}: {why}", short(commit)))?,
        );
    }
    signers.dedup();
    Ok(signers.join(", "))
}

fn short(oid: Oid) -> String {
    oid.to_string()[..12].to_string()
}

/// An annotated tag's signature and the bytes it signs (the tag object up to the signature).
/// As git does: the signature is the last block, and nothing but whitespace may follow it.
fn tag_parts(repo: &Repository, tag: Oid) -> Result<(Vec<u8>, Vec<u8>), String> {
    let odb = repo.odb().map_err(|e| e.message().to_string())?;
    let object = odb
        .read(tag)
        .map_err(|e| format!("tag {}: {}", short(tag), e.message()))?;
    if object.kind() != git2::ObjectType::Tag {
        return Err(format!("{} is not an annotated tag", short(tag)));
    }
    let data = object.data();
    let start = [
        "-----BEGIN PGP SIGNATURE-----",
        "-----BEGIN SSH SIGNATURE-----",
    ]
    .iter()
    .filter_map(|marker| {
        let needle = format!("\n{marker}");
        data.windows(needle.len())
            .rposition(|w| w == needle.as_bytes())
            .map(|i| i + 1)
    })
    .max()
    .ok_or_else(|| format!("tag {} is not signed", short(tag)))?;
    let signature = &data[start..];
    let text = String::from_utf8_lossy(signature);
    let end = ["-----END PGP SIGNATURE-----", "-----END SSH SIGNATURE-----"]
        .iter()
        .filter_map(|e| text.rfind(e).map(|i| i + e.len()))
        .max()
        .ok_or_else(|| format!("tag {}: its signature has no end", short(tag)))?;
    if !text[end..].trim().is_empty() {
        return Err(format!("tag {}: data follows its signature", short(tag)));
    }
    Ok((signature.to_vec(), data[..start].to_vec()))
}

/// Who made `signature` over `data`, among the `trusted` keys; else why it is not trusted.
fn signed_by(signature: &[u8], data: &[u8], trusted: &[Trusted<'_>]) -> Result<String, String> {
    let text = std::str::from_utf8(signature).map_err(|_| "the signature is not text")?;
    let head = text.trim_start();
    if head.starts_with("-----BEGIN SSH SIGNATURE-----") {
        ssh(text, data, trusted)
    } else if head.starts_with("-----BEGIN PGP SIGNATURE-----") {
        pgp(text, data, trusted)
    } else {
        Err("the signature is neither SSH nor OpenPGP".into())
    }
}

fn ssh(text: &str, data: &[u8], trusted: &[Trusted<'_>]) -> Result<String, String> {
    let sig = ssh_key::SshSig::from_pem(text.trim())
        .map_err(|e| format!("a malformed SSH signature: {e}"))?;
    let fingerprint = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    for (_, key, allowed) in trusted {
        let VerificationKey::SshAllowedSigners(_) = key else {
            continue;
        };
        for (principal, public) in allowed_signers(allowed) {
            if public.key_data() != sig.public_key() {
                continue;
            }
            // `verify` also checks the signature's namespace is `git`.
            return match public.verify("git", data, &sig) {
                Ok(()) => Ok(format!("{principal} (SSH {fingerprint})")),
                Err(_) => Err(format!(
                    "the SSH signature of {principal} ({fingerprint}) does not match the signed content"
                )),
            };
        }
    }
    Err(format!(
        "signed by SSH key {fingerprint}, which no trusted key names"
    ))
}

/// The entries of an allowed-signers file that may sign Git objects: `(principals, key)`. Only
/// plain keys for the `git` namespace: a certificate authority, or an entry with a validity
/// window (not checked here), is not trusted.
fn allowed_signers(text: &str) -> Vec<(String, ssh_key::PublicKey)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = words(line);
        let is_type =
            |s: &str| s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-");
        // `principals [options] keytype key [comment]`
        let (options, at) = match fields.get(1) {
            Some(t) if is_type(t) => (Vec::new(), 1),
            Some(o) if fields.get(2).is_some_and(|t| is_type(t)) => (options(o), 2),
            _ => continue,
        };
        let namespaces = options.iter().find_map(|o| o.strip_prefix("namespaces="));
        if namespaces.is_some_and(|ns| !ns.split(',').any(|n| n == "git" || n == "*")) {
            continue;
        }
        if options
            .iter()
            .any(|o| o == "cert-authority" || o.starts_with("valid-"))
        {
            continue;
        }
        let Some(key) = fields.get(at + 1) else {
            continue;
        };
        if let Ok(public) = ssh_key::PublicKey::from_openssh(&format!("{} {key}", fields[at])) {
            out.push((fields[0].clone(), public));
        }
    }
    out
}

/// The words of a line, a quoted stretch (`namespaces="git,file"`) kept in its word.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut word, mut quoted) = (String::new(), false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The options of an allowed-signers line, split at commas outside quotes, quotes removed.
fn options(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut option, mut quoted) = (String::new(), false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut option)),
            c => option.push(c),
        }
    }
    out.push(option);
    out
}

fn pgp(text: &str, data: &[u8], trusted: &[Trusted<'_>]) -> Result<String, String> {
    use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey};
    use pgp::types::KeyDetails as _;
    let (sig, _) = DetachedSignature::from_string(text)
        .map_err(|e| format!("a malformed OpenPGP signature: {e}"))?;
    let issuers: Vec<String> = sig
        .signature
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:X}"))
        .chain(sig.signature.issuer_key_id().iter().map(|k| {
            k.as_ref()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        }))
        .collect();
    for (name, key, armored) in trusted {
        let VerificationKey::PgpPublicKey(_) = key else {
            continue;
        };
        let Ok((keys, _)) = SignedPublicKey::from_string_many(armored) else {
            tracing::warn!(key = %name, "the OpenPGP key file cannot be read; skipped");
            continue;
        };
        // Keys whose self-signatures hold and that carry no revocation; subkeys bound to them.
        for public in keys
            .flatten()
            .filter(|k| k.verify_bindings().is_ok() && k.details.revocation_signatures.is_empty())
        {
            let user = public
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            let fingerprint = format!("{:X}", public.fingerprint());
            let bound = public
                .public_subkeys
                .iter()
                .filter(|s| s.verify_bindings(&public.primary_key).is_ok());
            if sig.verify(&public, data).is_ok()
                || bound.into_iter().any(|s| sig.verify(s, data).is_ok())
            {
                return Ok(format!("{user} (OpenPGP {fingerprint})"));
            }
        }
    }
    Err(format!(
        "signed by OpenPGP key {}, which no trusted key verifies",
        issuers
            .first()
            .map(String::as_str)
            .unwrap_or("(unknown issuer)")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_signers_lines_are_read_as_ssh_keygen_reads_them() {
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIFjnPHjm0Xr8aFRbMG1ePgsbRWrXxByEjbUSCjsCnEG8";
        let text = format!(
            "# comment\n\
             alice@example.com ssh-ed25519 {key} laptop\n\
             bob@example.com namespaces=\"file,git\" ssh-ed25519 {key}\n\
             carol@example.com namespaces=\"file\" ssh-ed25519 {key}\n\
             *@example.com cert-authority ssh-ed25519 {key}\n\
             dave@example.com valid-before=\"20200101\" ssh-ed25519 {key}\n\
             broken line\n"
        );
        let principals: Vec<String> = allowed_signers(&text).into_iter().map(|(p, _)| p).collect();
        assert_eq!(principals, vec!["alice@example.com", "bob@example.com"]);
    }
}
