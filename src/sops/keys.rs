//! The private keys that open SOPS data keys: age X25519 identities and OpenPGP secret keys,
//! each under the name the agent config gives it (the fleet grants names to tenants).

use std::io::Read as _;
use std::str::FromStr as _;

use serde_json::Value;

/// One named key of the agent config's `decryption`.
pub(crate) struct Key {
    pub name: String,
    age: Vec<age::x25519::Identity>,
    pgp: Vec<pgp::composed::SignedSecretKey>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "Key({})", self.name)
    }
}

impl Key {
    /// The keys a Secret holds, as Flux reads them: each `*.agekey` entry an age identity file,
    /// each `*.asc` entry an armored OpenPGP secret key.
    pub(crate) fn from_secret(
        name: &str,
        data: &std::collections::BTreeMap<String, String>,
    ) -> Result<Key, String> {
        let mut key = Key {
            name: name.to_string(),
            age: Vec::new(),
            pgp: Vec::new(),
        };
        for (entry, text) in data {
            if entry.ends_with(".agekey") {
                key.age.extend(
                    Key::age(name, text)
                        .map_err(|why| format!("{entry}: {why}"))?
                        .age,
                );
            } else if entry.ends_with(".asc") {
                key.pgp.extend(
                    Key::pgp(name, text)
                        .map_err(|why| format!("{entry}: {why}"))?
                        .pgp,
                );
            }
        }
        if key.age.is_empty() && key.pgp.is_empty() {
            return Err("holds no *.agekey or *.asc entry".into());
        }
        Ok(key)
    }

    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines; `#` comments).
    pub(crate) fn age(name: &str, text: &str) -> Result<Key, String> {
        let mut identities = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = age::x25519::Identity::from_str(line)
                .map_err(|_| "not an age identity file (AGE-SECRET-KEY-1… lines)".to_string())?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err("holds no age identity".into());
        }
        Ok(Key {
            name: name.to_string(),
            age: identities,
            pgp: Vec::new(),
        })
    }

    /// Reads an armored OpenPGP secret key (or several); a passphrase is not supported.
    pub(crate) fn pgp(name: &str, text: &str) -> Result<Key, String> {
        use pgp::composed::PublicOrSecret;
        let (keys, _) = PublicOrSecret::from_armor_many(text.as_bytes())
            .map_err(|e| format!("not an armored OpenPGP key: {e}"))?;
        let mut secret = Vec::new();
        for key in keys {
            if let Ok(PublicOrSecret::Secret(k)) = key {
                secret.push(k);
            }
        }
        if secret.is_empty() {
            return Err("holds no OpenPGP secret key (a public key cannot decrypt)".into());
        }
        Ok(Key {
            name: name.to_string(),
            age: Vec::new(),
            pgp: secret,
        })
    }

    /// The data key from one `sops.age[]` or `sops.pgp[]` entry, if this key opens it.
    fn open(&self, entry: &Value, age_entry: bool) -> Option<Vec<u8>> {
        let enc = entry["enc"].as_str()?;
        match (age_entry, &self.age, &self.pgp) {
            (true, identities, _) if !identities.is_empty() => {
                let reader = age::armor::ArmoredReader::new(enc.trim().as_bytes());
                let decryptor = age::Decryptor::new(reader).ok()?;
                let mut out = Vec::new();
                decryptor
                    .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                    .ok()?
                    .take(1024)
                    .read_to_end(&mut out)
                    .ok()?;
                Some(out)
            }
            (false, _, keys) if !keys.is_empty() => {
                let parse = || {
                    pgp::composed::Message::from_armor(std::io::BufReader::new(
                        enc.trim().as_bytes(),
                    ))
                    .ok()
                    .map(|(m, _)| m)
                };
                let password = pgp::types::Password::empty();
                let attempt = parse()?
                    .decrypt_with_keys(vec![&password], keys.iter().collect())
                    .map_err(|e| e.to_string());
                // Old files may hold a session key in a packet without integrity protection;
                // the data key is then checked by the file's MAC, which it must open.
                let mut plain = match attempt {
                    Ok(m) => m,
                    Err(_) => keys
                        .iter()
                        .find_map(|k| parse()?.decrypt_legacy(&password, k).ok())?,
                };
                if plain.is_compressed() {
                    plain = plain.decompress().ok()?;
                }
                // A data key is 32 bytes: a message that inflates to more is not one.
                let mut out = Vec::new();
                (&mut plain).take(64).read_to_end(&mut out).ok()?;
                Some(out)
            }
            _ => None,
        }
    }
}

/// The keys a unit may use, by name.
#[derive(Debug, Default)]
pub(crate) struct KeyRing {
    pub keys: Vec<std::sync::Arc<Key>>,
    /// Keys granted but not usable here, each with why (named when no other key opens a file).
    pub unavailable: Vec<String>,
}

impl KeyRing {
    /// The file's data key, opened with one of these keys; or why not (naming the recipients
    /// the file is for, never the keys' contents).
    pub(crate) fn data_key(&self, meta: &Value) -> Result<[u8; 32], String> {
        for (list, age_entry) in [("age", true), ("pgp", false)] {
            for entry in meta[list].as_array().into_iter().flatten() {
                for key in &self.keys {
                    if let Some(bytes) = key.open(entry, age_entry) {
                        return <[u8; 32]>::try_from(bytes.as_slice())
                            .map_err(|_| "its data key is not 32 bytes".to_string());
                    }
                }
            }
        }
        let mut recipients: Vec<String> = Vec::new();
        for entry in meta["age"].as_array().into_iter().flatten() {
            recipients.push(format!(
                "age {}",
                entry["recipient"].as_str().unwrap_or("?")
            ));
        }
        for entry in meta["pgp"].as_array().into_iter().flatten() {
            recipients.push(format!("PGP {}", entry["fp"].as_str().unwrap_or("?")));
        }
        let cloud: Vec<&str> = ["kms", "gcp_kms", "azure_kv", "hc_vault"]
            .into_iter()
            .filter(|k| meta[*k].as_array().is_some_and(|a| !a.is_empty()))
            .collect();
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        let mut allowed = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        if !self.unavailable.is_empty() {
            allowed = format!("{allowed}; not usable: {}", self.unavailable.join("; "));
        }
        Err(match (recipients.is_empty(), cloud.is_empty()) {
            (true, false) => format!(
                "it can only be opened with cloud KMS ({}), which flotilla does not support; encrypt it to an age or PGP key",
                cloud.join(", ")
            ),
            (true, true) => "it names no recipient".to_string(),
            _ => format!(
                "none of the keys this unit may use ({allowed}) opens it (it is encrypted to {})",
                recipients.join(", ")
            ),
        })
    }
}

/// The agent config's keys, read once per render: each named key, or why it cannot be used.
#[derive(Clone, Default)]
pub(crate) struct KeyStore(
    std::sync::Arc<std::collections::BTreeMap<String, Result<std::sync::Arc<Key>, String>>>,
);

impl KeyStore {
    /// Reads every key file of `decryption` (its mode checked again: it may have changed since
    /// the config was read).
    pub(crate) fn load(
        decryption: &std::collections::BTreeMap<String, crate::config::DecryptionKey>,
    ) -> KeyStore {
        let keys = decryption
            .iter()
            .map(|(name, key)| {
                let (file, age) = (&key.file, key.age);
                let mode = if key.test_key {
                    Ok(())
                } else {
                    crate::config::private_key_file(file)
                };
                let loaded = mode
                    .and_then(|()| {
                        std::fs::read_to_string(file)
                            .map_err(|e| format!("cannot read {}: {e}", file.display()))
                    })
                    .and_then(|text| {
                        if age {
                            Key::age(name, &text)
                        } else {
                            Key::pgp(name, &text)
                        }
                        .map_err(|why| format!("{}: {why}", file.display()))
                    })
                    .map(std::sync::Arc::new);
                (name.clone(), loaded)
            })
            .collect();
        KeyStore(std::sync::Arc::new(keys))
    }

    /// These keys and `extra` (keys read from tenants' Secrets, by `secret:<ns>/<name>`).
    pub(crate) fn with(
        &self,
        extra: Vec<(String, Result<std::sync::Arc<Key>, String>)>,
    ) -> KeyStore {
        if extra.is_empty() {
            return self.clone();
        }
        let mut keys = (*self.0).clone();
        keys.extend(extra);
        KeyStore(std::sync::Arc::new(keys))
    }

    /// The keys `names` grant; those that cannot be used are kept with why, and named only
    /// when no other key opens a file.
    pub(crate) fn ring(&self, names: &[String]) -> Result<KeyRing, String> {
        let mut ring = KeyRing::default();
        for name in names {
            match self.0.get(name) {
                Some(Ok(key)) => ring.keys.push(key.clone()),
                Some(Err(why)) => ring.unavailable.push(format!("{name:?}: {why}")),
                None if name.starts_with("secret:") => ring.unavailable.push(format!(
                    "{name:?} is read from the tenant's namespace when the agent syncs (run, run --once, diff), not by render or validate"
                )),
                None => ring
                    .unavailable
                    .push(format!("{name:?} is not in the agent config's decryption")),
            }
        }
        Ok(ring)
    }
}

impl PartialEq for KeyStore {
    fn eq(&self, other: &KeyStore) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KeyStore {}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}
