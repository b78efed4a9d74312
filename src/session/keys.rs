//! Cookie keys: a JSON file of 256-bit secrets with ids, generated on first start. Several keys
//! may be valid at once (rotation): new cookies are sealed with `current`, cookies sealed with
//! any listed key still open until they expire.
//!
//! ```json
//! { "version": 1, "current": "k20261122a1b2",
//!   "keys": [ { "id": "k20261122a1b2", "secret": "<base64, 32 bytes>", "created": 1795000000 } ] }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::random::{Random, RandomError};

/// Length of every secret, in bytes (docs/security.md#29: at least 256 bits).
pub const SECRET_LEN: usize = 32;

/// Problems with the keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid keys file.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No randomness for a new key.
    #[error(transparent)]
    Random(#[from] RandomError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    version: u32,
    current: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    secret: String,
    created: u64,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish()
    }
}

/// One key, ready for sealing and opening.
pub struct Key {
    /// Its id, carried in every value sealed with it.
    pub id: String,
    /// When it was made (Unix seconds).
    pub created: u64,
    pub(crate) aead: LessSafeKey,
    mac: ring::hmac::Key,
}

impl Key {
    /// HMAC-SHA256 under this key, domain-separated by `label` (code digests, CSRF tokens).
    /// Parts are length-prefixed so different splits never collide.
    pub fn mac(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.mac);
        ctx.update(&(label.len() as u64).to_be_bytes());
        ctx.update(label.as_bytes());
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish()
    }
}

/// The keys in use.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: Arc<Key>,
    keys: Vec<Arc<Key>>,
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Derives the cookie-sealing key from a secret, so the secret itself could later feed other
/// purposes (code digests, link tokens) under different labels without key reuse.
fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"otpgate key derivation v1")
        .extract(secret);
    let mut out = [0u8; 32];
    // HKDF with a 32-byte output from SHA-256 cannot fail.
    if let Ok(okm) = prk.expand(&[label], ring::hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    out
}

impl KeyRing {
    /// The key new values are sealed with.
    pub fn current(&self) -> &Key {
        &self.current
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id).map(AsRef::as_ref)
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter().map(AsRef::as_ref)
    }

    /// A ring made from raw secrets (tests, benchmarks). The first is current.
    pub fn from_secrets(secrets: &[(&str, [u8; SECRET_LEN])]) -> Option<Self> {
        let keys: Vec<Arc<Key>> = secrets
            .iter()
            .map(|(id, s)| Arc::new(make_key(id, s, 0)))
            .collect();
        Some(Self {
            current: keys.first()?.clone(),
            keys,
        })
    }

    /// Reads the keys file; creates it with one new key when it does not exist.
    pub fn load_or_create(
        path: &Path,
        random: &dyn Random,
        now_secs: u64,
    ) -> Result<Self, KeyError> {
        match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = KeysFile {
                    version: 1,
                    current: String::new(),
                    keys: vec![],
                };
                let file = with_new_key(file, random, now_secs)?;
                match write_new(path, &file) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "generated a new cookie key");
                        parse(path, &serialize(&file))
                    }
                    // Another process created it meanwhile: use theirs.
                    Err(KeyError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
                            path: path.into(),
                            source,
                        })?;
                        parse(path, &bytes)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(source) => Err(KeyError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Adds a new key and makes it current; older keys stay valid. Returns the new id.
    pub fn rotate(path: &Path, random: &dyn Random, now_secs: u64) -> Result<String, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?;
        parse(path, &bytes)?;
        let file: KeysFile = serde_json::from_slice(&bytes).map_err(|e| invalid(path, e))?;
        let file = with_new_key(file, random, now_secs)?;
        replace(path, &file)?;
        Ok(file.current)
    }

    /// Removes a key that is not current. Cookies sealed with it stop working.
    pub fn retire(path: &Path, id: &str) -> Result<(), KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?;
        let mut file: KeysFile = serde_json::from_slice(&bytes).map_err(|e| invalid(path, e))?;
        if file.current == id {
            return Err(KeyError::Invalid {
                path: path.into(),
                message: format!("{id} is the current key; rotate first"),
            });
        }
        let before = file.keys.len();
        file.keys.retain(|k| k.id != id);
        if file.keys.len() == before {
            return Err(KeyError::Invalid {
                path: path.into(),
                message: format!("no key with id {id}"),
            });
        }
        replace(path, &file)
    }
}

fn invalid(path: &Path, e: impl fmt::Display) -> KeyError {
    KeyError::Invalid {
        path: path.into(),
        message: e.to_string(),
    }
}

fn make_key(id: &str, secret: &[u8], created: u64) -> Key {
    let derived = derive(secret, b"otpgate session cookie v1");
    // AES-256 takes any 32-byte key; UnboundKey::new only fails on a wrong length.
    let unbound = UnboundKey::new(&AES_256_GCM, &derived)
        .unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
    Key {
        id: id.to_owned(),
        created,
        aead: LessSafeKey::new(unbound),
        mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(secret, b"otpgate mac v1")),
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<KeyRing, KeyError> {
    let file: KeysFile = serde_json::from_slice(bytes).map_err(|e| invalid(path, e))?;
    if file.version != 1 {
        return Err(invalid(path, format!("unknown version {}", file.version)));
    }
    let mut keys = Vec::new();
    for k in &file.keys {
        if !valid_id(&k.id) {
            return Err(invalid(path, format!("invalid key id {:?}", k.id)));
        }
        if keys.iter().any(|x: &Arc<Key>| x.id == k.id) {
            return Err(invalid(path, format!("key id {} appears twice", k.id)));
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&k.secret)
            .map_err(|_| invalid(path, format!("key {}: secret is not base64", k.id)))?;
        if secret.len() < SECRET_LEN {
            return Err(invalid(
                path,
                format!("key {}: secret must be at least 256 bits", k.id),
            ));
        }
        keys.push(Arc::new(make_key(&k.id, &secret, k.created)));
    }
    let current = keys
        .iter()
        .find(|k| k.id == file.current)
        .cloned()
        .ok_or_else(|| {
            invalid(
                path,
                format!("current key {:?} is not in the list", file.current),
            )
        })?;
    Ok(KeyRing { current, keys })
}

fn with_new_key(
    mut file: KeysFile,
    random: &dyn Random,
    now_secs: u64,
) -> Result<KeysFile, KeyError> {
    let secret: [u8; SECRET_LEN] = crate::random::bytes(random)?;
    let tag: [u8; 3] = crate::random::bytes(random)?;
    let id = format!("k{now_secs}{}", crate::random::hex(&tag));
    file.keys.push(KeyEntry {
        id: id.clone(),
        secret: base64::engine::general_purpose::STANDARD.encode(secret),
        created: now_secs,
    });
    file.current = id;
    Ok(file)
}

fn serialize(file: &KeysFile) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(file).unwrap_or_default();
    v.push(b'\n');
    v
}

fn write_new(path: &Path, file: &KeysFile) -> Result<(), KeyError> {
    crate::private_file::create_new(path, &serialize(file)).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })
}

fn replace(path: &Path, file: &KeysFile) -> Result<(), KeyError> {
    crate::private_file::replace(path, &serialize(file)).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[test]
    fn generated_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/keys.json");
        let r = SystemRandom::default();
        let a = KeyRing::load_or_create(&path, &r, 1000).unwrap();
        let b = KeyRing::load_or_create(&path, &r, 2000).unwrap();
        assert_eq!(a.current().id, b.current().id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o077,
                0
            );
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{a:?}").contains(&text[text.find("secret").unwrap() + 10..][..20]));
    }

    #[test]
    fn rotation_keeps_old_keys_and_retire_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let r = SystemRandom::default();
        let old = KeyRing::load_or_create(&path, &r, 1000)
            .unwrap()
            .current()
            .id
            .clone();
        let new = KeyRing::rotate(&path, &r, 2000).unwrap();
        let ring = KeyRing::load_or_create(&path, &r, 3000).unwrap();
        assert_eq!(ring.current().id, new);
        assert!(ring.get(&old).is_some());
        assert!(
            KeyRing::retire(&path, &new).is_err(),
            "the current key cannot be retired"
        );
        KeyRing::retire(&path, &old).unwrap();
        let ring = KeyRing::load_or_create(&path, &r, 3000).unwrap();
        assert!(ring.get(&old).is_none());
        assert_eq!(ring.keys().count(), 1);
    }

    #[test]
    fn rejects_weak_or_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let r = SystemRandom::default();
        for bad in [
            r#"{"version":1,"current":"a","keys":[{"id":"a","secret":"c2hvcnQ=","created":0}]}"#,
            r#"{"version":1,"current":"b","keys":[{"id":"a","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":0}]}"#,
            r#"{"version":2,"current":"a","keys":[]}"#,
            r#"{"version":1,"current":"a","keys":[],"extra":1}"#,
            r#"{"version":1,"current":"a b","keys":[{"id":"a b","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":0}]}"#,
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    KeyRing::load_or_create(&path, &r, 0),
                    Err(KeyError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }
}
