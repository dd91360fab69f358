//! SOPS files for the tests, written as the `sops` tool writes them (AES-256-GCM values with a
//! 32-byte nonce and the key path as additional data, the SHA-512 MAC encrypted under
//! `lastmodified`), with the data key wrapped by the real `age` command. The decryptor is
//! checked against files `sops` itself wrote (`../shared/fixtures/sops/`); these make the
//! Secrets, `.env` files and values the scenarios need.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha512};

type Cipher = aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U32>;

/// The fixtures `sops` wrote.
pub fn fixtures() -> PathBuf {
    super::repo_root().join("../shared/fixtures/sops")
}

/// An age identity made by `age-keygen`, written to `dir/<name>.agekey` (mode 0600); its
/// public recipient. `None` without the `age` tools.
pub fn age_key(dir: &Path, name: &str) -> Option<(PathBuf, String)> {
    let out = Command::new("age-keygen").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    let file = dir.join(format!("{name}.agekey"));
    std::fs::write(&file, &text).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    Some((file, recipient))
}

/// `data` wrapped for `recipient` by the `age` command, armored.
pub fn age_wrap(data: &[u8], recipient: &str) -> String {
    let mut child = Command::new("age")
        .args(["-r", recipient, "-a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("age");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn random<const N: usize>() -> [u8; N] {
    use std::io::Read as _;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn seal(plain: &[u8], key: &[u8; 32], aad: &str, kind: &str) -> String {
    let iv: [u8; 32] = random();
    let cipher = Cipher::new(key.into());
    let sealed = cipher
        .encrypt(
            aes_gcm::Nonce::<aes_gcm::aead::consts::U32>::from_slice(&iv),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .unwrap();
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        b64(data),
        b64(&iv),
        b64(tag)
    )
}

fn walk(
    v: &mut Value,
    path: &mut Vec<String>,
    key: &[u8; 32],
    only: Option<&regex::Regex>,
    mac_only: bool,
    hash: &mut Sha512,
) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                path.push(k.clone());
                walk(child, path, key, only, mac_only, hash);
                path.pop();
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| walk(i, path, key, only, mac_only, hash)),
        Value::Null => {}
        leaf => {
            let (bytes, kind) = match &*leaf {
                Value::String(s) => (s.as_bytes().to_vec(), "str"),
                Value::Bool(b) => (
                    if *b {
                        b"True".to_vec()
                    } else {
                        b"False".to_vec()
                    },
                    "bool",
                ),
                Value::Number(n) if n.is_i64() => (n.to_string().into_bytes(), "int"),
                Value::Number(n) => (n.to_string().into_bytes(), "float"),
                _ => unreachable!(),
            };
            let encrypted = only.is_none_or(|r| path.iter().any(|p| r.is_match(p)));
            if encrypted || !mac_only {
                hash.update(&bytes);
            }
            if encrypted && !bytes.is_empty() {
                *leaf = Value::String(seal(&bytes, key, &format!("{}:", path.join(":")), kind));
            }
        }
    }
}

fn metadata(
    key: &[u8; 32],
    digest: String,
    recipient: &str,
    encrypted_regex: Option<&str>,
) -> Value {
    let lastmodified = "2026-12-02T00:00:00Z";
    let mut meta = json!({
        "age": [{"recipient": recipient, "enc": age_wrap(key, recipient)}],
        "lastmodified": lastmodified,
        "mac": seal(digest.as_bytes(), key, lastmodified, "str"),
        "version": "3.9.0",
    });
    if let Some(r) = encrypted_regex {
        meta["encrypted_regex"] = json!(r);
    }
    meta
}

/// `plain` (a mapping) as a SOPS file for `recipient` (JSON text, which is YAML), the values
/// under keys matching `encrypted_regex` encrypted (all of them when `None`).
pub fn encrypt(plain: &Value, recipient: &str, encrypted_regex: Option<&str>) -> String {
    encrypt_with(plain, recipient, encrypted_regex, false)
}

/// [`encrypt`], with `mac_only_encrypted` (the MAC over the encrypted values only, seeded with
/// sha256("sops") as sops seeds it).
pub fn encrypt_with(
    plain: &Value,
    recipient: &str,
    encrypted_regex: Option<&str>,
    mac_only: bool,
) -> String {
    let key: [u8; 32] = random();
    let mut tree = plain.clone();
    let regex = encrypted_regex.map(|r| regex::Regex::new(r).unwrap());
    let mut hash = Sha512::new();
    if mac_only {
        hash.update(sha2::Sha256::digest(b"sops"));
    }
    walk(
        &mut tree,
        &mut Vec::new(),
        &key,
        regex.as_ref(),
        mac_only,
        &mut hash,
    );
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02X}")).collect();
    tree["sops"] = metadata(&key, digest, recipient, encrypted_regex);
    if mac_only {
        tree["sops"]["mac_only_encrypted"] = json!(true);
    }
    serde_json::to_string_pretty(&tree).unwrap()
}

/// `pairs` as a SOPS dotenv file for `recipient`.
pub fn encrypt_dotenv(pairs: &[(&str, &str)], recipient: &str) -> String {
    let key: [u8; 32] = random();
    let mut map = Map::new();
    for (k, v) in pairs {
        map.insert(k.to_string(), json!(v));
    }
    let mut tree = Value::Object(map);
    let mut hash = Sha512::new();
    walk(&mut tree, &mut Vec::new(), &key, None, false, &mut hash);
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02X}")).collect();
    let meta = metadata(&key, digest, recipient, None);
    let mut out = String::new();
    for (k, v) in tree.as_object().unwrap() {
        out.push_str(&format!(
            "{k}={}\n",
            v.as_str().unwrap().replace('\n', "\\n")
        ));
    }
    out.push_str(&format!(
        "sops_age__list_0__map_enc={}\n",
        meta["age"][0]["enc"].as_str().unwrap().replace('\n', "\\n")
    ));
    out.push_str(&format!("sops_age__list_0__map_recipient={recipient}\n"));
    for k in ["lastmodified", "mac", "version"] {
        out.push_str(&format!("sops_{k}={}\n", meta[k].as_str().unwrap()));
    }
    out
}

/// `format.enc.yaml` (written by sops, `foo: bar`, for the PGP test key) with its data key
/// also wrapped for an age `recipient`, as its README says to make age variants: the data key
/// opened by `gpg` with the fixture's key, wrapped again by `age`. `None` without gpg or age.
pub fn age_variant_of_fixture(work: &Path, recipient: &str) -> Option<String> {
    let home = work.join("gnupg");
    std::fs::create_dir_all(&home).ok()?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).ok()?;
    let gpg = |args: &[&str], input: Option<&str>| {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--quiet"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).ok()?;
        }
        drop(stdin);
        let out = child.wait_with_output().ok()?;
        out.status.success().then_some(out.stdout)
    };
    let key = fixtures().join("sops_functional_tests_key.asc");
    gpg(&["--import", key.to_str()?], None)?;
    let text = std::fs::read_to_string(fixtures().join("format.enc.yaml")).ok()?;
    let doc = flotilla::yaml::Node::parse(&text, "format.enc.yaml")
        .ok()?
        .to_json();
    let data_key = gpg(&["--decrypt"], Some(doc["sops"]["pgp"][0]["enc"].as_str()?))?;
    let mut doc = doc;
    doc["sops"]["age"] = json!([{"recipient": recipient, "enc": age_wrap(&data_key, recipient)}]);
    doc["sops"].as_object_mut()?.remove("pgp");
    Some(serde_json::to_string_pretty(&doc).unwrap())
}
