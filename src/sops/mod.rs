//! SOPS-encrypted documents (YAML, JSON and dotenv, as the `sops` tool writes them), decrypted
//! in memory with the keys a tenant may use. Pure: no file or network access beyond what the
//! caller hands in.
//!
//! A SOPS file keeps its structure; each value the rules select is
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`, AES-256-GCM under the file's data key with a
//! 32-byte nonce and, as additional data, the value's path (each mapping key followed by `:`).
//! The data key is wrapped for each recipient under `sops:` (`age`, `pgp`, or cloud KMS, which
//! flotilla does not open). `sops.mac` is the SHA-512 of every value in document order (only
//! the encrypted ones with `mac_only_encrypted`), encrypted with the data key and
//! `lastmodified` as additional data: a file without it, or whose values do not match it, is
//! refused (there is no "ignore MAC" here).

mod keys;
mod tree;

pub(crate) use keys::{Key, KeyRing, KeyStore};

/// How the error of a key Secret that could not be read begins its cause (a transient failure).
pub(crate) const KEY_NOT_READ: &str = "could not be read as the tenant";
pub(crate) use tree::{decrypt_document, decrypt_dotenv, is_encrypted_dotenv};

#[cfg(test)]
mod tests;
