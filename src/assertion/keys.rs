//! The signing keys of identity assertions: a JSON file of P-256 private keys (PKCS#8) with
//! ids, beside the cookie keys and read by every replica. New assertions are signed with
//! `current`; keys retired by a rotation stay listed (and published in the JWKS) for
//! [`RETAIN_SECS`], so assertions signed before the rotation keep verifying until they expire.
//!
//! ```json
//! { "version": 1, "current": "j1795000000a1b2c3",
//!   "keys": [ { "id": "j1795000000a1b2c3", "pkcs8": "<base64>", "created": 1795000000 },
//!             { "id": "j1794000000d4e5f6", "pkcs8": "<base64>", "created": 1794000000,
//!               "retired": 1795000000 } ] }
//! ```
//!
//! Randomness: key ids come from the injected [`Random`], but ring makes the key itself and
//! the ECDSA nonces only from its own `SecureRandom`, a sealed trait no other source can
//! implement, so those use `ring::rand::SystemRandom` (the operating system's CSPRNG, the same
//! source `random::SystemRandom` wraps). Tests therefore pin signatures by verifying them, not
//! by comparing bytes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::random::{Random, RandomError};

/// How long a retired key stays published: far beyond an assertion's five minutes, so a
/// replica that reloads late, or a verifier's cached JWKS, never meets an unknown key.
pub const RETAIN_SECS: u64 = 3600;

/// Problems with the signing-keys file.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid signing-keys file.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No randomness for a new key.
    #[error("cannot make a signing key")]
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
    pkcs8: String,
    created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<u64>,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// One key, ready to sign.
pub struct SigningKey {
    /// Its id (the JWS `kid`).
    pub id: Arc<str>,
    /// When it was made (Unix seconds).
    pub created: u64,
    pub(super) pair: EcdsaKeyPair,
    /// The JWS header, base64url-encoded, ready to prefix every token.
    pub(super) header_b64: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// The keys in use: the current one signs, all are published.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    current: Arc<SigningKey>,
    keys: Vec<Arc<SigningKey>>,
    jwks: Bytes,
}

impl SigningKeys {
    /// The key new assertions are signed with.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Every published key, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        self.keys.iter().map(AsRef::as_ref)
    }

    /// The JSON Web Key Set of every published key (RFC 7517), made once per load.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// A ring with one fresh key that is never written anywhere (tests, benchmarks).
    pub fn ephemeral(id: &str) -> Result<Self, SigningKeyError> {
        let pkcs8 = generate()?;
        let key = make_key(Path::new("-"), id, &pkcs8, 0)?;
        Ok(Self::from_keys(key.clone(), vec![key]))
    }

    fn from_keys(current: Arc<SigningKey>, keys: Vec<Arc<SigningKey>>) -> Self {
        let jwks = jwks_json(&keys);
        Self {
            current,
            keys,
            jwks,
        }
    }

    /// Reads the keys file; creates it with one new key when it does not exist.
    pub fn load_or_create(
        path: &Path,
        random: &dyn Random,
        now_secs: u64,
    ) -> Result<Self, SigningKeyError> {
        match std::fs::read(path) {
            Ok(bytes) => parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = with_new_key(path, Vec::new(), random, now_secs)?;
                match write_file(path, &file, true) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "generated a new assertion signing key");
                        parse(path, &serialize(&file))
                    }
                    // Another replica created it meanwhile: use theirs.
                    Err(SigningKeyError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        parse(path, &read(path)?)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(source) => Err(SigningKeyError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Adds a new current key; the previous one is retired but stays published for
    /// [`RETAIN_SECS`], and keys retired longer ago are dropped. Returns the new id.
    pub fn rotate(
        path: &Path,
        random: &dyn Random,
        now_secs: u64,
    ) -> Result<String, SigningKeyError> {
        let bytes = read(path)?;
        parse(path, &bytes)?;
        let mut file: KeysFile = serde_json::from_slice(&bytes).map_err(|e| invalid(path, e))?;
        for k in &mut file.keys {
            if k.retired.is_none() {
                k.retired = Some(now_secs);
            }
        }
        file.keys.retain(|k| {
            k.retired
                .is_none_or(|r| now_secs < r.saturating_add(RETAIN_SECS))
        });
        let file = with_new_key(path, file.keys, random, now_secs)?;
        write_file(path, &file, false)?;
        Ok(file.current)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SigningKeyError> {
    std::fs::read(path).map_err(|source| SigningKeyError::Io {
        path: path.into(),
        source,
    })
}

fn invalid(path: &Path, e: impl fmt::Display) -> SigningKeyError {
    SigningKeyError::Invalid {
        path: path.into(),
        message: e.to_string(),
    }
}

fn generate() -> Result<Vec<u8>, SigningKeyError> {
    let rng = ring::rand::SystemRandom::new();
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| SigningKeyError::Random(RandomError))
}

fn make_key(
    path: &Path,
    id: &str,
    pkcs8: &[u8],
    created: u64,
) -> Result<Arc<SigningKey>, SigningKeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
        .map_err(|e| invalid(path, format!("key {id}: not a P-256 PKCS#8 key ({e})")))?;
    let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": id });
    Ok(Arc::new(SigningKey {
        id: id.into(),
        created,
        pair,
        header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
    }))
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse(path: &Path, bytes: &[u8]) -> Result<SigningKeys, SigningKeyError> {
    let file: KeysFile = serde_json::from_slice(bytes).map_err(|e| invalid(path, e))?;
    if file.version != 1 {
        return Err(invalid(path, format!("unknown version {}", file.version)));
    }
    let mut keys: Vec<Arc<SigningKey>> = Vec::new();
    for k in &file.keys {
        if !valid_id(&k.id) || keys.iter().any(|x| *x.id == *k.id) {
            return Err(invalid(
                path,
                format!("invalid or repeated key id {:?}", k.id),
            ));
        }
        let der = STANDARD
            .decode(&k.pkcs8)
            .map_err(|_| invalid(path, format!("key {}: pkcs8 is not base64", k.id)))?;
        keys.push(make_key(path, &k.id, &der, k.created)?);
    }
    let current = keys
        .iter()
        .find(|k| *k.id == *file.current)
        .cloned()
        .ok_or_else(|| {
            invalid(
                path,
                format!("current key {:?} is not listed", file.current),
            )
        })?;
    Ok(SigningKeys::from_keys(current, keys))
}

fn with_new_key(
    path: &Path,
    mut keys: Vec<KeyEntry>,
    random: &dyn Random,
    now_secs: u64,
) -> Result<KeysFile, SigningKeyError> {
    let tag: [u8; 3] = crate::random::bytes(random)?;
    let id = format!("j{now_secs}{}", crate::random::hex(&tag));
    if keys.iter().any(|k| k.id == id) {
        return Err(invalid(path, format!("key id {id} exists; try again")));
    }
    keys.push(KeyEntry {
        id: id.clone(),
        pkcs8: STANDARD.encode(generate()?),
        created: now_secs,
        retired: None,
    });
    Ok(KeysFile {
        version: 1,
        current: id,
        keys,
    })
}

/// RFC 7517 / 7518 §6.2: an uncompressed P-256 point is `04 || x || y`.
fn jwks_json(keys: &[Arc<SigningKey>]) -> Bytes {
    let list: Vec<serde_json::Value> = keys
        .iter()
        .filter_map(|k| {
            let point = k.pair.public_key().as_ref();
            let (x, y) = point.get(1..33).zip(point.get(33..65))?;
            Some(serde_json::json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                "kid": &*k.id,
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }))
        })
        .collect();
    Bytes::from(serde_json::json!({ "keys": list }).to_string())
}

fn serialize(file: &KeysFile) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(file).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Writes the file, readable by the owner only: a new file only if `create_new`, else replaced
/// whole, so a replica reading it never sees half a file.
fn write_file(path: &Path, file: &KeysFile, create_new: bool) -> Result<(), SigningKeyError> {
    let bytes = serialize(file);
    let written = if create_new {
        crate::private_file::create_new(path, &bytes)
    } else {
        crate::private_file::replace(path, &bytes)
    };
    written.map_err(|source| SigningKeyError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[test]
    fn signing_keys_are_made_once_private_and_never_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/jwt_keys.json");
        let r = SystemRandom::default();
        let a = SigningKeys::load_or_create(&path, &r, 1000).unwrap();
        let b = SigningKeys::load_or_create(&path, &r, 2000).unwrap();
        assert_eq!(a.current().id, b.current().id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        let secret = file["keys"][0]["pkcs8"].as_str().unwrap();
        assert!(!format!("{a:?}").contains(&secret[20..40]));
    }

    #[test]
    fn rotation_publishes_the_previous_key_for_an_hour_then_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_keys.json");
        let r = SystemRandom::default();
        let first = SigningKeys::load_or_create(&path, &r, 1000).unwrap();
        let first = first.current().id.to_string();
        let second = SigningKeys::rotate(&path, &r, 2000).unwrap();
        let ring = SigningKeys::load_or_create(&path, &r, 2000).unwrap();
        assert_eq!(&*ring.current().id, second);
        let jwks: serde_json::Value = serde_json::from_slice(&ring.jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [first.as_str(), second.as_str()]);
        // Within the hour the first stays; after it, the next rotation drops it.
        let third = SigningKeys::rotate(&path, &r, 2000 + RETAIN_SECS - 1).unwrap();
        assert_eq!(
            SigningKeys::load_or_create(&path, &r, 0)
                .unwrap()
                .keys()
                .count(),
            3
        );
        SigningKeys::rotate(&path, &r, 2000 + RETAIN_SECS + 1).unwrap();
        let ids: Vec<String> = SigningKeys::load_or_create(&path, &r, 0)
            .unwrap()
            .keys()
            .map(|k| k.id.to_string())
            .collect();
        assert!(!ids.contains(&first) && ids.contains(&second) && ids.contains(&third));
    }

    #[test]
    fn malformed_signing_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_keys.json");
        let r = SystemRandom::default();
        for bad in [
            r#"{"version":1,"current":"a","keys":[{"id":"a","pkcs8":"c2hvcnQ=","created":0}]}"#,
            r#"{"version":1,"current":"b","keys":[]}"#,
            r#"{"version":2,"current":"a","keys":[]}"#,
            r#"{"version":1,"current":"a","keys":[],"extra":1}"#,
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    SigningKeys::load_or_create(&path, &r, 0),
                    Err(SigningKeyError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }
}
