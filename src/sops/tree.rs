//! Walking a SOPS tree: which values are encrypted (the file's rules), decrypting them, and the
//! MAC over them in document order.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha512};

use super::KeyRing;

/// AES-256-GCM with SOPS's 32-byte nonce.
type Cipher = aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U32>;

/// Whether a parsed document is a SOPS file (a top-level `sops` mapping with its version).
pub(crate) fn is_encrypted_tree(doc: &Value) -> bool {
    doc["sops"].is_object()
        && (doc["sops"]["version"].is_string() || doc["sops"]["mac"].is_string())
}

/// sha256("sops"), what sops hashes first when `mac_only_encrypted` is set.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Which values a file's rules encrypt.
struct Rules {
    unencrypted_suffix: Option<String>,
    encrypted_suffix: Option<String>,
    unencrypted_regex: Option<regex::Regex>,
    encrypted_regex: Option<regex::Regex>,
    mac_only_encrypted: bool,
}

impl Rules {
    fn of(meta: &Value) -> Result<Rules, String> {
        let text = |k: &str| {
            meta[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let regex = |k: &str| {
            text(k)
                .map(|r| regex::Regex::new(&r).map_err(|e| format!("sops.{k}: {e}")))
                .transpose()
        };
        Ok(Rules {
            unencrypted_suffix: text("unencrypted_suffix"),
            encrypted_suffix: text("encrypted_suffix"),
            unencrypted_regex: regex("unencrypted_regex")?,
            encrypted_regex: regex("encrypted_regex")?,
            // A dotenv file's metadata are strings.
            mac_only_encrypted: match &meta["mac_only_encrypted"] {
                Value::Bool(b) => *b,
                Value::String(s) => s.eq_ignore_ascii_case("true"),
                _ => false,
            },
        })
    }

    /// As `sops` decides it for a value at `path` (its mapping keys).
    fn encrypts(&self, path: &[String]) -> bool {
        let mut encrypted = true;
        if let Some(s) = &self.unencrypted_suffix
            && path.iter().any(|p| p.ends_with(s.as_str()))
        {
            encrypted = false;
        }
        if let Some(s) = &self.encrypted_suffix {
            encrypted = path.iter().any(|p| p.ends_with(s.as_str()));
        }
        if let Some(r) = &self.unencrypted_regex
            && path.iter().any(|p| r.is_match(p))
        {
            encrypted = false;
        }
        if let Some(r) = &self.encrypted_regex {
            encrypted = path.iter().any(|p| r.is_match(p));
        }
        encrypted
    }
}

/// One `ENC[AES256_GCM,…]` value decrypted with `key` and `aad`: its plaintext and type.
fn open(value: &str, key: &[u8; 32], aad: &str) -> Result<(Vec<u8>, String), String> {
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|v| v.strip_suffix(']'))
        .ok_or("not a SOPS-encrypted value")?;
    let (mut data, mut iv, mut tag, mut kind) = (None, None, None, None);
    for part in inner.split(',') {
        match part.split_once(':') {
            Some(("data", v)) => data = Some(v),
            Some(("iv", v)) => iv = Some(v),
            Some(("tag", v)) => tag = Some(v),
            Some(("type", v)) => kind = Some(v),
            _ => return Err("a malformed encrypted value".into()),
        }
    }
    let b64 = |v: Option<&str>| {
        base64::engine::general_purpose::STANDARD
            .decode(v.unwrap_or_default())
            .map_err(|_| "a malformed encrypted value".to_string())
    };
    let (mut sealed, iv, tag) = (b64(data)?, b64(iv)?, b64(tag)?);
    if iv.len() != 32 || tag.len() != 16 {
        return Err("a malformed encrypted value (nonce or tag size)".into());
    }
    sealed.extend_from_slice(&tag);
    let cipher = Cipher::new(key.into());
    let plain = cipher
        .decrypt(
            aes_gcm::Nonce::<aes_gcm::aead::consts::U32>::from_slice(&iv),
            Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| {
            "a value does not decrypt: it was changed, or moved to another key".to_string()
        })?;
    Ok((plain, kind.unwrap_or("str").to_string()))
}

/// The bytes `sops` hashes for an unencrypted value (its `ToBytes`).
fn plain_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Bool(true) => b"True".to_vec(),
        Value::Bool(false) => b"False".to_vec(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string().into_bytes(),
            (None, Some(f)) => format!("{f}").into_bytes(),
            _ => n.to_string().into_bytes(),
        },
        _ => Vec::new(),
    }
}

/// The value a plaintext of `kind` stands for.
fn typed(plain: Vec<u8>, kind: &str) -> Result<Value, String> {
    let text =
        String::from_utf8(plain).map_err(|_| "a decrypted value is not UTF-8".to_string())?;
    Ok(match kind {
        "int" => text
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| "a decrypted int is not a number")?,
        "float" => text
            .parse::<f64>()
            .map(Value::from)
            .map_err(|_| "a decrypted float is not a number")?,
        "bool" => Value::Bool(text.eq_ignore_ascii_case("true")),
        _ => Value::String(text),
    })
}

struct Walk<'a> {
    key: &'a [u8; 32],
    rules: &'a Rules,
    hash: Sha512,
}

impl Walk<'_> {
    fn value(&mut self, value: &mut Value, path: &mut Vec<String>) -> Result<(), String> {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    path.push(k.clone());
                    let r = self.value(v, path);
                    path.pop();
                    r?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for item in items {
                    self.value(item, path)?;
                }
                Ok(())
            }
            Value::Null => Ok(()),
            leaf => {
                let encrypted = self.rules.encrypts(path);
                if encrypted {
                    let aad = format!("{}:", path.join(":"));
                    match leaf {
                        // sops leaves empty strings as they are.
                        Value::String(s) if s.is_empty() => {}
                        Value::String(s) => {
                            let (plain, kind) = open(s, self.key, &aad)
                                .map_err(|e| format!("{}: {e}", path.join(".")))?;
                            self.hash.update(&plain);
                            *leaf = typed(plain, &kind)
                                .map_err(|e| format!("{}: {e}", path.join(".")))?;
                            return Ok(());
                        }
                        _ => {
                            return Err(format!(
                                "{}: a value the file's rules encrypt is not encrypted",
                                path.join(".")
                            ));
                        }
                    }
                }
                if encrypted || !self.rules.mac_only_encrypted {
                    self.hash.update(plain_bytes(leaf));
                }
                Ok(())
            }
        }
    }
}

/// Decrypts a SOPS document (its `sops` metadata removed), checking its MAC.
pub(crate) fn decrypt_document(mut doc: Value, keys: &KeyRing) -> Result<Value, String> {
    if !is_encrypted_tree(&doc) {
        return Err("not a SOPS file (no sops metadata)".into());
    }
    let Some(Value::Object(root)) = Some(&mut doc) else {
        return Err("not a SOPS file".into());
    };
    let meta = root
        .remove("sops")
        .ok_or("not a SOPS file (no sops metadata)")?;
    let key = keys.data_key(&meta)?;
    let mut tree = Value::Object(std::mem::take(root));
    let digest = walk(&mut tree, &key, &meta)?;
    check_mac(&meta, &key, &digest)?;
    Ok(tree)
}

fn walk(tree: &mut Value, key: &[u8; 32], meta: &Value) -> Result<String, String> {
    let rules = Rules::of(meta)?;
    let mut walk = Walk {
        key,
        rules: &rules,
        hash: Sha512::new(),
    };
    // sops seeds a MAC over the encrypted values only with sha256("sops"), so that a file's MAC
    // cannot be matched by switching the flag on and adding plain values.
    if rules.mac_only_encrypted {
        walk.hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    walk.value(tree, &mut Vec::new())?;
    Ok(walk
        .hash
        .finalize()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}

fn check_mac(meta: &Value, key: &[u8; 32], digest: &str) -> Result<(), String> {
    let Some(mac) = meta["mac"].as_str().filter(|m| !m.is_empty()) else {
        return Err("it has no MAC, so a change to it could not be detected; refused".into());
    };
    let lastmodified = match &meta["lastmodified"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (plain, _) = open(mac, key, &lastmodified)
        .map_err(|_| "its MAC does not decrypt; refused".to_string())?;
    if plain != digest.as_bytes() {
        return Err("its MAC does not match its values (a value was changed); refused".into());
    }
    Ok(())
}

/// Whether a dotenv text is SOPS-encrypted (`sops_mac=` or `sops_version=` lines).
pub(crate) fn is_encrypted_dotenv(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("sops_version=") || l.starts_with("sops_mac="))
}

/// Decrypts a SOPS dotenv file (`KEY=ENC[…]` lines, metadata flattened into `sops_…` lines),
/// checking its MAC; the plaintext dotenv text.
pub(crate) fn decrypt_dotenv(text: &str, keys: &KeyRing) -> Result<String, String> {
    let mut data = Map::new();
    let mut meta = Value::Object(Map::new());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or("a line that is not KEY=VALUE")?;
        match k.strip_prefix("sops_") {
            Some(flat) => set_flat(&mut meta, flat, v.replace("\\n", "\n")),
            // sops writes a newline in a value as `\n`.
            None => {
                data.insert(k.to_string(), Value::String(v.replace("\\n", "\n")));
            }
        }
    }
    let key = keys.data_key(&meta)?;
    let mut tree = Value::Object(data);
    let digest = walk(&mut tree, &key, &meta)?;
    check_mac(&meta, &key, &digest)?;
    let mut out = String::new();
    if let Value::Object(map) = tree {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            // Written back as sops writes it: a value's newlines as `\n`, so that a multi-line
            // value (a PEM key) stays one line for the dotenv reader.
            if v.contains('\r') {
                return Err(format!("{k}: a value holds a carriage return"));
            }
            out.push_str(&format!("{k}={}\n", v.replace('\n', "\\n")));
        }
    }
    Ok(out)
}

/// Sets `pgp__list_0__map_enc` (sops's flattening of nested metadata) in `meta`.
fn set_flat(meta: &mut Value, flat: &str, value: String) {
    let mut at = meta;
    let parts: Vec<&str> = flat.split("__").collect();
    let mut i = 0;
    while i < parts.len() {
        let part = parts[i];
        if part.starts_with("list_") && i + 1 < parts.len() {
            let index: usize = part[5..].parse().unwrap_or(0).min(64);
            if !at.is_array() {
                *at = Value::Array(Vec::new());
            }
            let list = at.as_array_mut().expect("made an array");
            while list.len() <= index {
                list.push(Value::Object(Map::new()));
            }
            at = &mut list[index];
            i += 1;
            continue;
        }
        let name = part.strip_prefix("map_").unwrap_or(part);
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let map = at.as_object_mut().expect("made an object");
        if i + 1 == parts.len() {
            map.insert(name.to_string(), Value::String(value));
            return;
        }
        at = map.entry(name.to_string()).or_insert(Value::Null);
        i += 1;
    }
}
