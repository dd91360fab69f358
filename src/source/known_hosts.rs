//! Host key verification against an OpenSSH `known_hosts` file. A host that is not in the file,
//! or whose key is not the one listed, is refused: flotilla never learns a host key on its own.
//!
//! Supported: plain and `[host]:port` patterns, comma-separated lists, `*`/`?` wildcards, `!`
//! negations, hashed entries (`|1|salt|hash`, HMAC-SHA1), and `@revoked`. `@cert-authority` lines
//! are skipped (host certificates are not supported).

use base64::Engine as _;
use hmac::{KeyInit, Mac};

/// Why a host key was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No entry names this host.
    Unknown,
    /// The host is listed with other keys: it changed, or someone is in the middle.
    Changed,
    /// The key is marked `@revoked`.
    Revoked,
}

/// The name a host has in known_hosts: `host` on port 22, `[host]:port` elsewhere.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `key` (the SSH wire-format public key blob the server presented) for `host` (as made
/// by [`host_name`]) against the text of a known_hosts file.
pub fn verify(known_hosts: &str, host: &str, key: &[u8]) -> Result<(), Refusal> {
    let mut listed = false;
    let mut matched = false;
    for line in known_hosts.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let marker = first.strip_prefix('@');
        if marker.is_some() {
            first = fields.next().unwrap_or_default();
        }
        let (Some(_key_type), Some(encoded)) = (fields.next(), fields.next()) else {
            continue;
        };
        if marker == Some("cert-authority") || !patterns_match(first, host) {
            continue;
        }
        let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        let same = blob == key;
        if marker == Some("revoked") {
            if same {
                return Err(Refusal::Revoked);
            }
            continue;
        }
        listed = true;
        matched |= same;
    }
    match (matched, listed) {
        (true, _) => Ok(()),
        (false, true) => Err(Refusal::Changed),
        (false, false) => Err(Refusal::Unknown),
    }
}

/// Whether a pattern list (`a,b,!c`, or one hashed entry) names `host`.
fn patterns_match(list: &str, host: &str) -> bool {
    if let Some(hashed) = list.strip_prefix("|1|") {
        return hashed_match(hashed, host);
    }
    let mut any = false;
    for pattern in list.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated, host) {
                return false;
            }
        } else if glob(pattern, host) {
            any = true;
        }
    }
    any
}

/// `|1|<base64 salt>|<base64 HMAC-SHA1(salt, host)>`.
fn hashed_match(hashed: &str, host: &str) -> bool {
    let engine = base64::engine::general_purpose::STANDARD;
    let Some((salt, digest)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(digest)) = (engine.decode(salt), engine.decode(digest)) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(host.as_bytes());
    mac.verify_slice(&digest).is_ok()
}

/// `*` matches any run, `?` any one character; the host name compares case-insensitively.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHv4q7oN0mJbD4TjWSWmOd2vK8Zp6ShsNmJ5hy1M9mqI";

    fn blob(k: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(k).unwrap()
    }

    #[test]
    fn a_listed_key_is_accepted_and_others_are_refused() {
        let file = format!("# comment\ngit.example.com,10.0.0.1 ssh-ed25519 {KEY_A}\n");
        assert_eq!(verify(&file, "git.example.com", &blob(KEY_A)), Ok(()));
        assert_eq!(verify(&file, "GIT.example.com", &blob(KEY_A)), Ok(()));
        assert_eq!(
            verify(&file, "git.example.com", &blob(KEY_B)),
            Err(Refusal::Changed)
        );
        assert_eq!(
            verify(&file, "other.example.com", &blob(KEY_A)),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn ports_other_than_22_use_the_bracket_form() {
        let file = format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n");
        assert_eq!(host_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
        assert_eq!(
            verify(&file, &host_name("127.0.0.1", 2222), &blob(KEY_A)),
            Ok(())
        );
        assert_eq!(
            verify(&file, &host_name("127.0.0.1", 22), &blob(KEY_A)),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn hashed_entries_match_their_host() {
        // Made with `ssh-keygen -H` semantics: HMAC-SHA1 keyed by the salt over the host name.
        let salt = b"0123456789abcdefghij";
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"git.example.com");
        let digest = mac.finalize().into_bytes();
        let engine = base64::engine::general_purpose::STANDARD;
        let file = format!(
            "|1|{}|{} ssh-ed25519 {KEY_A}\n",
            engine.encode(salt),
            engine.encode(digest)
        );
        assert_eq!(verify(&file, "git.example.com", &blob(KEY_A)), Ok(()));
        assert_eq!(
            verify(&file, "git.example.org", &blob(KEY_A)),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn wildcards_negations_and_revocations() {
        let file = format!(
            "*.example.com,!evil.example.com ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_B}\n"
        );
        assert_eq!(verify(&file, "git.example.com", &blob(KEY_A)), Ok(()));
        assert_eq!(
            verify(&file, "evil.example.com", &blob(KEY_A)),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            verify(&file, "git.example.com", &blob(KEY_B)),
            Err(Refusal::Revoked)
        );
        assert!(glob("g?t.*.com", "git.example.com"));
        assert!(!glob("g?t.*.com", "gt.example.com"));
    }
}
