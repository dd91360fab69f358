//! Verified provenance: the signature on a commit (its `gpgsig` header) or on an annotated tag
//! (appended to the tag's message), checked against the keys a source's `verify` names. SSH
//! signatures (SSHSIG, namespace `git`) against an OpenSSH allowed-signers file, as
//! `ssh-keygen -Y verify` does; OpenPGP signatures against armored public keys. Blocking: runs
//! with the rest of a fetch's Git work.

use std::collections::BTreeMap;

use git2::{Oid, Repository};

use crate::config::{VerificationKey, Verify, VerifyMode};

/// Checks what `verify` asks of `commit` (and `tag`, the annotated tag object the ref names, if
/// any). Returns who signed (`alice@example.com (SSH SHA256:...)`), or why not.
pub(super) fn check(
    repo: &Repository,
    commit: Oid,
    tag: Option<Oid>,
    verify: &Verify,
    keys: &BTreeMap<String, VerificationKey>,
) -> Result<String, String> {
    let mut trusted = Vec::new();
    for name in &verify.keys {
        let key = keys
            .get(name)
            .ok_or_else(|| format!("no verification key named {name:?} in the agent config"))?;
        trusted.push((name.as_str(), key));
    }
    let mut signers = Vec::new();
    if matches!(verify.mode, VerifyMode::Tag | VerifyMode::TagAndHead) {
        let tag =
            tag.ok_or("verify.mode asks for a signed tag, but the ref is not an annotated tag")?;
        let (signature, data) = tag_parts(repo, tag)?;
        signers.push(
            signed_by(&signature, &data, &trusted)
                .map_err(|why| format!("tag {}: {why}", short(tag)))?,
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
            signed_by(&signature, &data, &trusted)
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
            .position(|w| w == needle.as_bytes())
            .map(|i| i + 1)
    })
    .min()
    .ok_or_else(|| format!("tag {} is not signed", short(tag)))?;
    Ok((data[start..].to_vec(), data[..start].to_vec()))
}

/// Who made `signature` over `data`, among the `trusted` keys; else why it is not trusted.
fn signed_by(
    signature: &[u8],
    data: &[u8],
    trusted: &[(&str, &VerificationKey)],
) -> Result<String, String> {
    let text = std::str::from_utf8(signature).map_err(|_| "the signature is not text")?;
    if text
        .trim_start()
        .starts_with("-----BEGIN SSH SIGNATURE-----")
    {
        ssh(text, data, trusted)
    } else if text
        .trim_start()
        .starts_with("-----BEGIN PGP SIGNATURE-----")
    {
        pgp(text, data, trusted)
    } else {
        Err("the signature is neither SSH nor OpenPGP".into())
    }
}

fn ssh(text: &str, data: &[u8], trusted: &[(&str, &VerificationKey)]) -> Result<String, String> {
    let sig = ssh_key::SshSig::from_pem(text.trim())
        .map_err(|e| format!("a malformed SSH signature: {e}"))?;
    let fingerprint = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256);
    for (name, key) in trusted {
        let VerificationKey::SshAllowedSigners(file) = key else {
            continue;
        };
        let allowed = std::fs::read_to_string(file)
            .map_err(|e| format!("verification key {name}: {}: {e}", file.display()))?;
        for (principal, public) in allowed_signers(&allowed) {
            if public.key_data() != sig.public_key() {
                continue;
            }
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

/// The entries of an allowed-signers file that may sign Git objects: `(principals, key)`.
fn allowed_signers(text: &str) -> Vec<(String, ssh_key::PublicKey)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_type =
            |s: &str| s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-");
        // `principals [options] keytype key [comment]`
        let (options, at) = match fields.get(1) {
            Some(t) if is_type(t) => ("", 1),
            Some(o) if fields.get(2).is_some_and(|t| is_type(t)) => (*o, 2),
            _ => continue,
        };
        if let Some(ns) = options
            .split(',')
            .find_map(|o| o.strip_prefix("namespaces="))
            && !ns.trim_matches('"').split(',').any(|n| n == "git")
        {
            continue;
        }
        if options.split(',').any(|o| o == "cert-authority") {
            continue;
        }
        let Some(key) = fields.get(at + 1) else {
            continue;
        };
        if let Ok(public) = ssh_key::PublicKey::from_openssh(&format!("{} {key}", fields[at])) {
            out.push((fields[0].to_string(), public));
        }
    }
    out
}

fn pgp(text: &str, data: &[u8], trusted: &[(&str, &VerificationKey)]) -> Result<String, String> {
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
    for (name, key) in trusted {
        let VerificationKey::PgpPublicKey(file) = key else {
            continue;
        };
        let armored = std::fs::read_to_string(file)
            .map_err(|e| format!("verification key {name}: {}: {e}", file.display()))?;
        let (keys, _) = SignedPublicKey::from_string_many(&armored)
            .map_err(|e| format!("verification key {name}: {}: {e}", file.display()))?;
        for public in keys.flatten() {
            let user = public
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            let fingerprint = format!("{:X}", public.fingerprint());
            if sig.verify(&public, data).is_ok() {
                return Ok(format!("{user} (OpenPGP {fingerprint})"));
            }
            for sub in &public.public_subkeys {
                if sig.verify(sub, data).is_ok() {
                    return Ok(format!("{user} (OpenPGP {fingerprint})"));
                }
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
