//! Provenance settings: the keys the agent trusts (`verification_keys` of the agent config) and
//! what a Git source asks of its revisions (`verify: { mode, keys }` on a source).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::{Fields, Node, Report, Value, join};

/// A named set of trusted keys: an OpenSSH allowed-signers file, or OpenPGP public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerificationKey {
    /// `ssh_allowed_signers_file`: lines `principals [options] keytype key`, as `ssh-keygen -Y
    /// verify` reads them.
    SshAllowedSigners(PathBuf),
    /// `pgp_public_key_file`: one or more armored OpenPGP public keys.
    PgpPublicKey(PathBuf),
}

/// What a source's revisions must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verify {
    pub mode: VerifyMode,
    /// Names of `verification_keys` entries; a signature by any of them is trusted.
    pub keys: Vec<String>,
}

/// Which signature is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VerifyMode {
    /// The commit the ref points to.
    Head,
    /// The annotated tag the ref names (a tag ref).
    Tag,
    /// Both.
    TagAndHead,
}

impl VerifyMode {
    /// Whether checking `self` checks at least what `other` asks.
    pub fn covers(self, other: VerifyMode) -> bool {
        self == other || self == VerifyMode::TagAndHead
    }
}

impl fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyMode::Head => "head",
            VerifyMode::Tag => "tag",
            VerifyMode::TagAndHead => "tag-and-head",
        })
    }
}

impl Verify {
    /// Whether `self` (an app's own setting) is at least as strict as `required` (its fleet's):
    /// the same checks or more, and only keys the fleet trusts.
    pub fn within(&self, required: &Verify) -> bool {
        self.mode.covers(required.mode) && self.keys.iter().all(|k| required.keys.contains(k))
    }

    /// A stable text of the policy, for caching results per commit.
    pub fn cache_key(&self) -> String {
        let mut keys = self.keys.clone();
        keys.sort();
        keys.dedup();
        format!("{}:{}", self.mode, keys.join(","))
    }
}

/// `verify: { mode, keys }` of a source.
pub(crate) fn decode_verify(node: &Node, path: &str, report: &mut Report) -> Option<Verify> {
    let mut f = Fields::new(node, path, report)?;
    let mode = match f.get("mode") {
        None => Some(VerifyMode::Head),
        Some(n) => match n.str(&join(path, "mode"), report)? {
            "head" => Some(VerifyMode::Head),
            "tag" => Some(VerifyMode::Tag),
            "tag-and-head" => Some(VerifyMode::TagAndHead),
            other => {
                report.error(
                    n,
                    &join(path, "mode"),
                    format!("{other:?} is not head, tag or tag-and-head"),
                );
                None
            }
        },
    };
    let keys = f.require("keys", node, report).and_then(|n| {
        let keys = n.strings(&join(path, "keys"), report)?;
        if keys.is_empty() {
            report.error(n, &join(path, "keys"), "name at least one verification key");
            return None;
        }
        Some(keys)
    });
    f.finish(&["mode", "keys"], report);
    Some(Verify {
        mode: mode?,
        keys: keys?,
    })
}

/// `verification_keys:` of the agent config: each `{ ssh_allowed_signers_file }` or
/// `{ pgp_public_key_file }`, a readable file.
pub(crate) fn decode_keys(
    node: &Node,
    base: &Path,
    report: &mut Report,
) -> Option<BTreeMap<String, VerificationKey>> {
    let Value::Map(entries) = &node.value else {
        return report.wrong_type(node, "verification_keys", "a mapping of names to keys");
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let Some(name) = k.str("verification_keys", report) else {
            ok = false;
            continue;
        };
        let path = format!("verification_keys.{name}");
        let key = (|| {
            let mut f = Fields::new(v, &path, report)?;
            let given = f.present(&["ssh_allowed_signers_file", "pgp_public_key_file"]);
            let file = |f: &mut Fields<'_>, field: &str, report: &mut Report| {
                super::decode::readable_file(f.get(field)?, &join(&path, field), base, report)
            };
            let ssh = file(&mut f, "ssh_allowed_signers_file", report);
            let pgp = file(&mut f, "pgp_public_key_file", report);
            f.finish(&["ssh_allowed_signers_file", "pgp_public_key_file"], report);
            if given.len() != 1 {
                report.error(
                    v,
                    &path,
                    "give exactly one of ssh_allowed_signers_file or pgp_public_key_file",
                );
                return None;
            }
            ssh.map(VerificationKey::SshAllowedSigners)
                .or(pgp.map(VerificationKey::PgpPublicKey))
        })();
        match key {
            Some(key) => {
                out.insert(name.to_string(), key);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}
