//! `decryption:` of the agent config: the private keys that open SOPS files, each
//! `{ age_key_file }` (an age identity file) or `{ pgp_key_file }` (an armored OpenPGP secret
//! key), granted to tenants by name in the fleet. A key file must be readable by its owner only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::yaml::{Fields, Node, Report, Value, join};

/// A private key for SOPS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecryptionKey {
    pub file: PathBuf,
    /// An age identity file, else an armored OpenPGP secret key.
    pub age: bool,
    /// `test_key: true`: a key that is public anyway (an example's, committed to Git): its
    /// file's mode is not checked.
    pub test_key: bool,
}

pub(crate) fn decode_decryption(
    node: &Node,
    base: &Path,
    report: &mut Report,
) -> Option<BTreeMap<String, DecryptionKey>> {
    let Value::Map(entries) = &node.value else {
        return report.wrong_type(node, "decryption", "a mapping of names to keys");
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let Some(name) = k.str("decryption", report) else {
            ok = false;
            continue;
        };
        let path = format!("decryption.{name}");
        let key = (|| {
            let mut f = Fields::new(v, &path, report)?;
            let given = f.present(&["age_key_file", "pgp_key_file"]);
            let test_key = f
                .get("test_key")
                .map_or(Some(false), |n| n.bool(&join(&path, "test_key"), report))?;
            let file = |f: &mut Fields<'_>, field: &str, report: &mut Report| {
                let node = f.get(field)?;
                let file = super::decode::readable_file(node, &join(&path, field), base, report)?;
                if !test_key {
                    private_key_file(&file)
                        .map_err(|why| report.error(node, &join(&path, field), why))
                        .ok()?;
                }
                Some(file)
            };
            let age = file(&mut f, "age_key_file", report);
            let pgp = file(&mut f, "pgp_key_file", report);
            f.finish(&["age_key_file", "pgp_key_file", "test_key"], report);
            if given.len() != 1 {
                report.error(v, &path, "give exactly one of age_key_file or pgp_key_file");
                return None;
            }
            let (file, age) = match (age, pgp) {
                (Some(f), _) => (f, true),
                (None, Some(f)) => (f, false),
                (None, None) => return None,
            };
            Some(DecryptionKey {
                file,
                age,
                test_key,
            })
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

/// A private key's file may be read by its owner only (as ssh insists for its keys).
pub(crate) fn private_key_file(file: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}); a private key must be readable by its owner only (chmod 600)",
            file.display(),
            mode & 0o777
        ));
    }
    Ok(())
}
