//! Service tokens (docs/product.md#s4): a client id and a 256-bit random secret, presented in
//! two request headers by scripts and load testers instead of a login.
//!
//! The config holds no secret in clear, only `HMAC-SHA256(K, client id, secret)`. `K` is a
//! dedicated 32-byte key in its own file (`service_token_key_file`), not a cookie key: cookie
//! keys rotate and retire, and a token must outlive that. Every replica reads the same file, so
//! a token works on all of them. The secret carries 256 random bits, so one keyed hash is
//! enough; a password hash would only slow down every request (docs/security.md#29).
//!
//! Everything that can be is computed when the runtime is built: the hashes of secrets given
//! as files, the identity header, the lookup table by client id. A check is one map lookup, one
//! HMAC and two constant-time comparisons, whatever the outcome of the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use ring::hmac;
use subtle::ConstantTimeEq as _;

use crate::config::{HASH_PREFIX, ServiceTokenSettings, TokenSecret};
use crate::random::{self, Random, RandomError};

/// Audit events of one token (used, or refused) are written at most this often.
pub const AUDIT_EVERY_MS: u64 = 60_000;

/// Domain separation: this key hashes nothing else, but the label keeps it that way.
const LABEL: &[u8] = b"otpgate service token v1";

/// Problems with the key file or the randomness behind a new token.
#[derive(Debug, thiserror::Error)]
pub enum ServiceTokenError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes in base64.
    #[error("{0}: expected 32 bytes in base64")]
    Invalid(PathBuf),
    /// No randomness.
    #[error("no randomness for a new token")]
    Random(#[from] RandomError),
}

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// One header without the other, a repeated header, or a client id that is not text.
    Malformed,
    /// No token has this client id.
    Unknown,
    /// The secret is not one of the token's.
    WrongSecret,
    /// The secret is right but the token has expired.
    Expired,
}

impl Failure {
    /// The metric label and audit reason.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::WrongSecret => "wrong_secret",
            Self::Expired => "expired",
        }
    }
}

#[derive(Debug)]
struct Token {
    name: Box<str>,
    client_id: Box<str>,
    /// `X-Otpgate-User: service:<name>`, made once.
    user: HeaderValue,
    /// Two slots, always both compared; with one secret the second repeats the first.
    hashes: [[u8; 32]; 2],
    expires_ms: Option<u64>,
    used_audited_ms: AtomicU64,
    refused_audited_ms: AtomicU64,
}

/// A valid token presented with a request.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a>(&'a Token);

impl<'a> Service<'a> {
    /// The token's name (policies' `service_token: NAME`).
    pub fn name(&self) -> &'a str {
        &self.0.name
    }
    /// The token's client id (not a secret).
    pub fn client_id(&self) -> &'a str {
        &self.0.client_id
    }
    /// The `X-Otpgate-User` value for the upstream.
    pub fn user_header(&self) -> &'a HeaderValue {
        &self.0.user
    }
    /// When the token stops working (Unix ms), if it expires.
    pub fn expires_ms(&self) -> Option<u64> {
        self.0.expires_ms
    }
    /// Whether a `service_token.used` event is due (at most one a minute per token).
    pub fn audit_due(&self, now_ms: u64) -> bool {
        due(&self.0.used_audited_ms, now_ms)
    }
}

/// A refused token, with what is known about it.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// Why.
    pub failure: Failure,
    token: Option<&'a Token>,
    tokens: &'a ServiceTokens,
}

impl<'a> Refused<'a> {
    /// The token's name, when the client id named one.
    pub fn name(&self) -> Option<&'a str> {
        self.token.map(|t| &*t.name)
    }
    /// Whether a `service_token.refused` event is due: at most one a minute per token, and
    /// one a minute for all unknown or malformed ones together (a flood writes no flood).
    pub fn audit_due(&self, now_ms: u64) -> bool {
        let slot = self
            .token
            .map_or(&self.tokens.stranger_audited_ms, |t| &t.refused_audited_ms);
        due(slot, now_ms)
    }
}

/// Claims the slot when its last event is a minute old (or there was none).
fn due(slot: &AtomicU64, now_ms: u64) -> bool {
    let last = slot.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last) < AUDIT_EVERY_MS {
        return false;
    }
    slot.compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Every configured token, ready to check; part of the runtime built from one config.
#[derive(Debug)]
pub struct ServiceTokens {
    by_id: HashMap<Box<str>, Token>,
    mac: Option<hmac::Key>,
    id_header: HeaderName,
    secret_header: HeaderName,
    stranger_audited_ms: AtomicU64,
}

impl ServiceTokens {
    /// Builds the table. Without a usable key (config validation requires one when there are
    /// tokens) every token is refused.
    pub fn build(s: &ServiceTokenSettings) -> Self {
        let mac = s.key.as_ref().and_then(|k| mac_key(k.expose()));
        let mut by_id = HashMap::with_capacity(s.tokens.len());
        for t in &s.tokens {
            let mut hashes = Vec::with_capacity(2);
            for secret in &t.secrets {
                match (secret, &mac) {
                    (TokenSecret::Hash(h), _) => hashes.push(*h),
                    (TokenSecret::Plain(p), Some(k)) => {
                        hashes.push(hash(k, &t.client_id, p.expose().as_bytes()));
                    }
                    (TokenSecret::Plain(_), None) => {}
                }
            }
            let Some(first) = hashes.first().copied() else {
                continue;
            };
            let second = hashes.get(1).copied().unwrap_or(first);
            let user = HeaderValue::from_str(&format!("service:{}", t.name))
                .unwrap_or_else(|_| HeaderValue::from_static("service"));
            by_id.insert(
                t.client_id.clone().into_boxed_str(),
                Token {
                    name: t.name.clone().into_boxed_str(),
                    client_id: t.client_id.clone().into_boxed_str(),
                    user,
                    hashes: [first, second],
                    expires_ms: t
                        .expires
                        .map(|e| u64::try_from(e.as_millis()).unwrap_or(u64::MAX)),
                    used_audited_ms: AtomicU64::new(0),
                    refused_audited_ms: AtomicU64::new(0),
                },
            );
        }
        Self {
            by_id,
            mac,
            id_header: s.client_id_header.clone(),
            secret_header: s.client_secret_header.clone(),
            stranger_audited_ms: AtomicU64::new(0),
        }
    }

    /// The two headers that carry a token (client id, secret); never forwarded upstream.
    pub fn headers(&self) -> [&HeaderName; 2] {
        [&self.id_header, &self.secret_header]
    }

    /// Whether the request presents a token at all (either header): such a request is decided
    /// as a service, never by its cookie. A look at the request's few names, once, costs less
    /// than two lookups by hash (most requests carry neither header); the names are exact and
    /// lower case both in the map and here, as for a lookup.
    pub fn presented(&self, headers: &HeaderMap) -> bool {
        headers
            .keys()
            .any(|k| *k == self.id_header || *k == self.secret_header)
    }

    /// Checks the token a request presents at `now_ms`.
    pub fn check(&self, headers: &HeaderMap, now_ms: u64) -> Result<Service<'_>, Refused<'_>> {
        let refuse = |failure, token| Refused {
            failure,
            token,
            tokens: self,
        };
        let mut ids = headers.get_all(&self.id_header).iter();
        let mut secrets = headers.get_all(&self.secret_header).iter();
        let (Some(id), None, Some(secret), None) =
            (ids.next(), ids.next(), secrets.next(), secrets.next())
        else {
            return Err(refuse(Failure::Malformed, None));
        };
        let Ok(id) = id.to_str() else {
            return Err(refuse(Failure::Malformed, None));
        };
        let Some(token) = self.by_id.get(id) else {
            return Err(refuse(Failure::Unknown, None));
        };
        let Some(mac) = &self.mac else {
            return Err(refuse(Failure::WrongSecret, Some(token)));
        };
        if !token.matches(&hash(mac, id, secret.as_bytes())) {
            return Err(refuse(Failure::WrongSecret, Some(token)));
        }
        // Expiry only after the secret: a stranger learns nothing about the token.
        if token.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(refuse(Failure::Expired, Some(token)));
        }
        Ok(Service(token))
    }
}

impl Token {
    /// Both slots are compared every time, in constant time, so the answer's timing does not
    /// tell which secret (if any) was close.
    fn matches(&self, digest: &[u8; 32]) -> bool {
        bool::from(digest.ct_eq(&self.hashes[0]) | digest.ct_eq(&self.hashes[1]))
    }
}

/// The HMAC key from the key file's text (base64 of 32 bytes).
fn mac_key(text: &str) -> Option<hmac::Key> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    (bytes.len() == 32).then(|| hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// `HMAC-SHA256(K, label, client id, secret)`, each part length-prefixed. The client id is in
/// it so a hash copied to another token does not work there.
pub fn hash(key: &hmac::Key, client_id: &str, secret: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    for part in [LABEL, client_id.as_bytes(), secret] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// A new token's credentials, shown once, and the hash the config keeps.
#[derive(Debug)]
pub struct Created {
    /// The client id (32 hex digits).
    pub client_id: String,
    /// The secret (256 random bits as 64 hex digits); printed once, stored nowhere.
    pub secret: crate::config::Secret,
    /// `hmac-sha256:<64 hex digits>`, for `secret_hash`.
    pub secret_hash: String,
}

/// Makes a new client id and secret, hashed under the key in `key_file` (made when missing).
pub fn create(key_file: &Path, random: &dyn Random) -> Result<Created, ServiceTokenError> {
    let key = load_or_create_key(key_file, random)?;
    let client_id = random::hex(&random::bytes::<16>(random)?);
    new_secret(&key, client_id, random)
}

/// A new secret for an existing client id (a rotation), and the config text of `old`, the
/// secret it replaces, so both can be listed while clients move over.
pub fn rotate(
    key_file: &Path,
    client_id: &str,
    old: &TokenSecret,
    random: &dyn Random,
) -> Result<(Created, String), ServiceTokenError> {
    let key = load_or_create_key(key_file, random)?;
    let old = match old {
        TokenSecret::Hash(h) => *h,
        TokenSecret::Plain(p) => hash(&key, client_id, p.expose().as_bytes()),
    };
    let created = new_secret(&key, client_id.to_owned(), random)?;
    Ok((created, hash_text(&old)))
}

fn new_secret(
    key: &hmac::Key,
    client_id: String,
    random: &dyn Random,
) -> Result<Created, ServiceTokenError> {
    let secret = random::hex(&random::bytes::<32>(random)?);
    let digest = hash(key, &client_id, secret.as_bytes());
    Ok(Created {
        secret_hash: hash_text(&digest),
        client_id,
        secret: crate::config::Secret::new(secret),
    })
}

/// `hmac-sha256:<64 hex digits>`, as `secret_hash` takes it.
fn hash_text(digest: &[u8; 32]) -> String {
    format!("{HASH_PREFIX}{}", random::hex(digest))
}

/// Reads the key file, or writes a new random key (mode 0600) when there is none.
pub fn load_or_create_key(
    path: &Path,
    random: &dyn Random,
) -> Result<hmac::Key, ServiceTokenError> {
    let io = |source| ServiceTokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text =
                base64::engine::general_purpose::STANDARD.encode(random::bytes::<32>(random)?);
            match crate::private_file::create_new(path, format!("{text}\n").as_bytes()) {
                Ok(()) => text,
                // Another process made it meanwhile: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(path).map_err(io)?
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(e) => return Err(io(e)),
    };
    mac_key(&text).ok_or_else(|| ServiceTokenError::Invalid(path.to_path_buf()))
}

#[cfg(test)]
mod tests;
