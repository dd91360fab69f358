//! Against files the real `sops` tool wrote (`../shared/fixtures/sops/`, its functional tests'
//! files and OpenPGP key).

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;

fn fixture(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sops");
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
        panic!(
            "the SOPS fixtures are read from {}: {name}: {e}",
            dir.display()
        )
    })
}

fn yaml(text: &str) -> Value {
    crate::yaml::Node::parse(text, "test").unwrap().to_json()
}

fn pgp_ring() -> KeyRing {
    KeyRing {
        keys: vec![Arc::new(
            Key::pgp("tests", &fixture("sops_functional_tests_key.asc")).unwrap(),
        )],
        unavailable: Vec::new(),
    }
}

#[test]
fn files_sops_wrote_decrypt_with_their_pgp_key() {
    let ring = pgp_ring();
    let doc = yaml(&fixture("format.enc.yaml"));
    assert!(tree::is_encrypted_tree(&doc));
    assert_eq!(decrypt_document(doc, &ring).unwrap(), json!({"foo": "bar"}));
    let doc: Value = serde_json::from_str(&fixture("format.enc.json")).unwrap();
    assert_eq!(decrypt_document(doc, &ring).unwrap(), json!({"foo": "bar"}));
    let doc = yaml(&fixture("multiple_keys.yaml"));
    let plain = decrypt_document(doc, &ring).unwrap();
    assert!(
        plain.is_object() && !plain.as_object().unwrap().is_empty(),
        "{plain}"
    );
    let doc = yaml(&fixture("comments.enc.yaml"));
    assert_eq!(
        decrypt_document(doc, &ring).unwrap(),
        yaml(&fixture("comments.yaml"))
    );
}

#[test]
fn a_missing_or_wrong_mac_and_a_changed_value_are_refused() {
    let ring = pgp_ring();
    let err = decrypt_document(yaml(&fixture("no_mac.yaml")), &ring).unwrap_err();
    assert!(err.contains("no MAC"), "{err}");
    // A value moved to another key: its additional data no longer matches.
    let moved = fixture("format.enc.yaml").replacen("foo:", "bar:", 1);
    let err = decrypt_document(yaml(&moved), &ring).unwrap_err();
    assert!(err.contains("bar: a value does not decrypt"), "{err}");
    // A plain value added beside the encrypted ones: the MAC no longer matches.
    let added = format!("extra_unencrypted: sneaky\n{}", fixture("format.enc.yaml"));
    let err = decrypt_document(yaml(&added), &ring).unwrap_err();
    assert!(err.contains("MAC does not match"), "{err}");
    // The MAC itself changed.
    let doc = fixture("format.enc.yaml");
    let at = doc.find("mac: ENC[AES256_GCM,data:").unwrap() + "mac: ENC[AES256_GCM,data:".len();
    let flipped = if &doc[at..at + 1] == "A" { "B" } else { "A" };
    let changed = format!("{}{flipped}{}", &doc[..at], &doc[at + 1..]);
    let err = decrypt_document(yaml(&changed), &ring).unwrap_err();
    assert!(err.contains("MAC"), "{err}");
}

#[test]
fn without_a_key_that_opens_it_the_file_names_its_recipients() {
    let err = decrypt_document(yaml(&fixture("format.enc.yaml")), &KeyRing::default()).unwrap_err();
    assert!(
        err.contains("none of the keys this unit may use (none) opens it (it is encrypted to PGP FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4)"),
        "{err}"
    );
    let kms = yaml(
        "a: ENC[AES256_GCM,data:x,iv:x,tag:x,type:str]\nsops:\n  kms: [{arn: arn:aws:kms:x}]\n  mac: x\n  version: 3.9.0\n",
    );
    let err = decrypt_document(kms, &pgp_ring()).unwrap_err();
    assert!(err.contains("only be opened with cloud KMS (kms)"), "{err}");
}

#[test]
fn a_dotenv_file_decrypts_and_keeps_its_mac() {
    // The dotenv form of format.enc.yaml, as sops writes dotenv files: the same value under the
    // same key (so the same additional data and MAC), the metadata flattened into sops_ lines.
    let doc = yaml(&fixture("format.enc.yaml"));
    let meta = &doc["sops"];
    let pgp = &meta["pgp"][0];
    let text = format!(
        "foo={}\nsops_lastmodified={}\nsops_mac={}\nsops_pgp__list_0__map_created_at={}\nsops_pgp__list_0__map_enc={}\nsops_pgp__list_0__map_fp={}\nsops_unencrypted_suffix=_unencrypted\nsops_version=3.13.1\n",
        doc["foo"].as_str().unwrap(),
        meta["lastmodified"].as_str().unwrap(),
        meta["mac"].as_str().unwrap(),
        pgp["created_at"].as_str().unwrap(),
        pgp["enc"].as_str().unwrap().replace('\n', "\\n"),
        pgp["fp"].as_str().unwrap(),
    );
    assert!(is_encrypted_dotenv(&text));
    assert_eq!(decrypt_dotenv(&text, &pgp_ring()).unwrap(), "foo=bar\n");
    let err = decrypt_dotenv(&text.replace("foo=", "fob="), &pgp_ring()).unwrap_err();
    assert!(err.contains("does not decrypt"), "{err}");
}
