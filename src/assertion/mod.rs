//! The signed identity assertion (docs/product.md#s4, docs/security.md#34): a short-lived JWS
//! (ES256) the gateway adds to every request a session let through, so an upstream can check
//! who is asking instead of taking plain headers on faith.
//!
//! The token is written by hand over ring: a compact JWS is two base64url JSON documents and a
//! signature, and the gateway only ever signs (verifiers are the apps' own JWT libraries; the
//! tests use ring's verifier and PyJWT). A JWT crate would add parsing and algorithm choice the
//! gateway never needs, and most pull in another crypto backend.
//!
//! Signing costs tens of microseconds, so tokens are cached per session ([`Assertions::token`])
//! and re-signed only when less than a minute (at most half the lifetime) is left, when the
//! signing key changed or when the identity they carry changed.

pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dashmap::DashMap;
use http::header::HeaderValue;
use serde::Serialize;

pub use keys::{SigningKeyError, SigningKeys};

use crate::policy::LoginMethod;
use crate::session::SessionId;

pub use crate::config::{
    DEFAULT_ASSERTION_HEADER as DEFAULT_HEADER, MAX_ASSERTION_LIFETIME as MAX_LIFETIME,
};

/// Cached tokens kept at most; past this, expired ones are dropped, and if that is not
/// enough the cache starts over (a miss only costs one signature).
const MAX_CACHED: usize = 50_000;

/// Why no assertion could be made.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    /// No signing keys were loaded.
    #[error("no assertion signing keys are loaded")]
    NoKeys,
    /// ring refused to sign (its error carries no detail).
    #[error("signing the identity assertion failed")]
    Sign,
    /// The token is not a valid header value (cannot happen with base64url).
    #[error("the identity assertion is not a valid header value")]
    Header(#[source] http::header::InvalidHeaderValue),
}

/// Who an assertion is about and for whom it is meant.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The session (the cache key; a session belongs to exactly one app).
    pub session: SessionId,
    /// When the session ends (Unix ms): no token outlives it.
    pub session_expires_ms: u64,
    /// `iss`: the app's public origin.
    pub issuer: &'a str,
    /// `aud`: the app's audience tag.
    pub audience: &'a str,
    /// `sub`: the user id (the value of `X-Otpgate-User`).
    pub user: &'a str,
    /// `email`.
    pub email: &'a str,
    /// `groups`.
    pub groups: &'a [Arc<str>],
    /// `amr`: the login method.
    pub method: LoginMethod,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    email: &'a str,
    #[serde(serialize_with = "str_seq")]
    groups: &'a [Arc<str>],
    amr: [&'static str; 1],
    iat: u64,
    exp: u64,
}

fn str_seq<S: serde::Serializer>(v: &&[Arc<str>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|g| &**g))
}

/// A signed token and what it was signed for.
#[derive(Debug)]
struct Cached {
    token: HeaderValue,
    exp_ms: u64,
    kid: Arc<str>,
    issuer: Box<str>,
    audience: Box<str>,
    user: Box<str>,
    email: Box<str>,
    groups: Box<[Arc<str>]>,
    method: LoginMethod,
}

impl Cached {
    fn serves(&self, s: &Subject<'_>, kid: &str, now_ms: u64, margin_ms: u64) -> bool {
        self.exp_ms.saturating_sub(now_ms) >= margin_ms
            && *self.kid == *kid
            && *self.audience == *s.audience
            && *self.issuer == *s.issuer
            && *self.user == *s.user
            && *self.email == *s.email
            && *self.groups == *s.groups
            && self.method == s.method
    }
}

/// The signing keys (swapped on reload) and the per-session token cache.
#[derive(Debug, Default)]
pub struct Assertions {
    keys: ArcSwapOption<SigningKeys>,
    cache: DashMap<SessionId, Cached>,
}

impl Assertions {
    /// Puts signing keys in service (start and reload); tokens signed with a key that is no
    /// longer current are re-signed on their next use.
    pub fn replace_keys(&self, keys: SigningKeys) {
        self.keys.store(Some(Arc::new(keys)));
    }

    /// The JWKS document of the keys in service, if any.
    pub fn jwks(&self) -> Option<Bytes> {
        self.keys.load().as_ref().map(|k| k.jwks())
    }

    /// The assertion for `s` at `now_ms` with at most `lifetime`: the cached one while it has
    /// more than a minute (at most half the lifetime) left, else a newly signed one.
    pub fn token(
        &self,
        s: &Subject<'_>,
        lifetime: Duration,
        now_ms: u64,
    ) -> Result<HeaderValue, AssertionError> {
        let guard = self.keys.load();
        let keys = guard.as_ref().ok_or(AssertionError::NoKeys)?;
        let key = keys.current();
        let lifetime_ms = u64::try_from(lifetime.min(MAX_LIFETIME).as_millis()).unwrap_or(0);
        let margin_ms = (lifetime_ms / 2).min(60_000);
        if let Some(c) = self.cache.get(&s.session)
            && c.serves(s, &key.id, now_ms, margin_ms)
        {
            return Ok(c.token.clone());
        }
        let iat = now_ms / 1000;
        let exp = (iat + lifetime_ms / 1000).min(s.session_expires_ms / 1000);
        let token = sign(key, s, iat, exp)?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.retain(|_, c| c.exp_ms > now_ms);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        self.cache.insert(
            s.session,
            Cached {
                token: token.clone(),
                exp_ms: exp.saturating_mul(1000),
                kid: key.id.clone(),
                issuer: s.issuer.into(),
                audience: s.audience.into(),
                user: s.user.into(),
                email: s.email.into(),
                groups: s.groups.into(),
                method: s.method,
            },
        );
        Ok(token)
    }

    /// How many tokens are cached (tests, metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// The compact JWS `header.claims.signature` (RFC 7515 §7.1) with an ES256 signature in the
/// fixed `r || s` form JWS asks for (RFC 7518 §3.4).
fn sign(
    key: &keys::SigningKey,
    s: &Subject<'_>,
    iat: u64,
    exp: u64,
) -> Result<HeaderValue, AssertionError> {
    let claims = JwtClaims {
        iss: s.issuer,
        aud: s.audience,
        sub: s.user,
        email: s.email,
        groups: s.groups,
        amr: [s.method.as_str()],
        iat,
        exp,
    };
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_vec(&claims).unwrap_or_default();
    let mut token = String::with_capacity(key.header_b64.len() + json.len() * 4 / 3 + 90);
    token.push_str(&key.header_b64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let rng = ring::rand::SystemRandom::new();
    let sig = key
        .pair
        .sign(&rng, token.as_bytes())
        .map_err(|_| AssertionError::Sign)?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
    HeaderValue::from_str(&token).map_err(AssertionError::Header)
}

#[cfg(test)]
mod tests;
