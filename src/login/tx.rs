//! The browser's half of a login: a sealed login-transaction cookie (a random id, when it
//! started, and the validated return target), and CSRF tokens derived from it.
//!
//! A code is stored under the transaction id, so it completes only the login of the browser
//! that asked for it (docs/security.md#15); the return target travels only inside this sealed value
//! (docs/security.md#3); every form carries a token that only this transaction's cookie can produce
//! (docs/security.md#37, with `SameSite=Lax` and an `Origin` check).

use std::time::Duration;

use base64::Engine as _;
use http::HeaderMap;
use subtle::ConstantTimeEq as _;

use crate::random::{Random, RandomError};
use crate::session::cookie::{SealError, TokenKind, open_bytes, seal_bytes};
use crate::session::{KeyRing, cookie_values};

/// How long a login transaction lasts (covers a 10-minute code with room to read the mail).
pub(crate) const LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Cookie name on https apps (`__Host-`: `Secure`, `Path=/`, no `Domain`).
pub(crate) const COOKIE_HOST: &str = crate::session::LOGIN_COOKIE_HOST;
/// Cookie name on plain-http apps.
pub(crate) const COOKIE_PLAIN: &str = crate::session::LOGIN_COOKIE_PLAIN;

/// The cookie name for an app.
pub(crate) fn cookie_name(https: bool) -> &'static str {
    if https { COOKIE_HOST } else { COOKIE_PLAIN }
}

/// One login transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoginTx {
    /// Random id; codes are filed under it.
    pub id: [u8; 16],
    /// Start, Unix milliseconds.
    pub started_ms: u64,
    /// Where to go afterwards (validated when stored, validated again when used).
    pub rd: String,
}

impl LoginTx {
    /// A new transaction.
    pub(crate) fn new(random: &dyn Random, now_ms: u64, rd: String) -> Result<Self, RandomError> {
        Ok(Self {
            id: crate::random::bytes(random)?,
            started_ms: now_ms,
            rd,
        })
    }

    /// The id as hex (state keys).
    pub(crate) fn hex(&self) -> String {
        crate::random::hex(&self.id)
    }

    /// The sealed cookie value.
    pub(crate) fn seal(
        &self,
        app: &str,
        keys: &KeyRing,
        random: &dyn Random,
    ) -> Result<String, SealError> {
        let rd = self.rd.as_bytes();
        let Ok(rd_len) = u16::try_from(rd.len()) else {
            return Err(SealError::Crypto);
        };
        let mut body = Vec::with_capacity(26 + rd.len());
        body.extend_from_slice(&self.id);
        body.extend_from_slice(&self.started_ms.to_be_bytes());
        body.extend_from_slice(&rd_len.to_be_bytes());
        body.extend_from_slice(rd);
        seal_bytes(TokenKind::Login, app, &body, keys, random)
    }

    /// The transaction in a request's cookie, if it opens for `app` and has not expired.
    pub(crate) fn from_headers(
        headers: &HeaderMap,
        name: &str,
        app: &str,
        keys: &KeyRing,
        now_ms: u64,
    ) -> Option<Self> {
        cookie_values(headers, name).take(4).find_map(|v| {
            let b = open_bytes(v, TokenKind::Login, app, keys).ok()?;
            let id: [u8; 16] = b.get(..16)?.try_into().ok()?;
            let started_ms = u64::from_be_bytes(b.get(16..24)?.try_into().ok()?);
            let len = usize::from(u16::from_be_bytes(b.get(24..26)?.try_into().ok()?));
            let rd = String::from_utf8(b.get(26..26 + len)?.to_vec()).ok()?;
            let lifetime = u64::try_from(LIFETIME.as_millis()).unwrap_or(u64::MAX);
            let live = started_ms <= now_ms.saturating_add(crate::session::cookie::SKEW_MS)
                && now_ms <= started_ms.saturating_add(lifetime);
            (live && b.len() == 26 + len).then_some(Self { id, started_ms, rd })
        })
    }
}

/// A CSRF token for `purpose` bound to `subject` (a transaction or session id) on `app`:
/// `<key id>.<base64url(HMAC)>`.
pub(crate) fn csrf_token(keys: &KeyRing, purpose: &str, app: &str, subject: &[u8]) -> String {
    let key = keys.current();
    let mac = key.mac("csrf", &[purpose.as_bytes(), app.as_bytes(), subject]);
    format!(
        "{}.{}",
        key.id,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    )
}

/// Checks a CSRF token in constant time.
pub(crate) fn csrf_ok(
    keys: &KeyRing,
    purpose: &str,
    app: &str,
    subject: &[u8],
    token: &str,
) -> bool {
    let Some((kid, mac)) = token.split_once('.') else {
        return false;
    };
    let Some(key) = keys.get(kid) else {
        return false;
    };
    let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac) else {
        return false;
    };
    let want = key.mac("csrf", &[purpose.as_bytes(), app.as_bytes(), subject]);
    given.len() == want.len() && bool::from(want.ct_eq(&given))
}

/// docs/security.md#37: a state-changing request must come from the app's own pages. A foreign
/// `Origin` is refused. `Origin: null` counts as absent: gateway pages send
/// `Referrer-Policy: no-referrer` (docs/product.md#s4), and under that policy browsers send `null`
/// even for same-origin form posts (Fetch, "append a request Origin header"). The CSRF token and
/// the `SameSite=Lax` transaction cookie protect those posts.
pub(crate) fn origin_ok(headers: &HeaderMap, app_origin: &str) -> bool {
    match headers.get(http::header::ORIGIN) {
        None => true,
        Some(o) => o.to_str().is_ok_and(|o| o == app_origin || o == "null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;
    use crate::session::KeyRing;

    fn keys() -> KeyRing {
        KeyRing::from_secrets(&[("k1", [5; 32])]).unwrap()
    }

    fn cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("{COOKIE_HOST}={v}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn round_trip_expiry_and_audience() {
        let r = SystemRandom::default();
        let tx = LoginTx::new(&r, 1_000_000, "https://app.example.test/x".into()).unwrap();
        let v = tx.seal("app", &keys(), &r).unwrap();
        assert_eq!(
            LoginTx::from_headers(&cookie(&v), COOKIE_HOST, "app", &keys(), 1_000_500),
            Some(tx)
        );
        let late = 1_000_000 + u64::try_from(LIFETIME.as_millis()).unwrap() + 1;
        assert_eq!(
            LoginTx::from_headers(&cookie(&v), COOKIE_HOST, "app", &keys(), late),
            None
        );
        assert_eq!(
            LoginTx::from_headers(&cookie(&v), COOKIE_HOST, "wiki", &keys(), 1_000_500),
            None
        );
        // A session or other token does not open as a login transaction.
        assert_eq!(
            LoginTx::from_headers(
                &cookie("v1.k1.AAAA"),
                COOKIE_HOST,
                "app",
                &keys(),
                1_000_500
            ),
            None
        );
    }

    #[test]
    fn sec_37_csrf_tokens_are_bound_to_purpose_app_and_subject() {
        let k = keys();
        let t = csrf_token(&k, "login", "app", b"tx1");
        assert!(csrf_ok(&k, "login", "app", b"tx1", &t));
        assert!(!csrf_ok(&k, "logout", "app", b"tx1", &t));
        assert!(!csrf_ok(&k, "login", "wiki", b"tx1", &t));
        assert!(!csrf_ok(&k, "login", "app", b"tx2", &t));
        assert!(!csrf_ok(&k, "login", "app", b"tx1", ""));
        assert!(!csrf_ok(&k, "login", "app", b"tx1", "k1.AAAA"));
        assert!(!csrf_ok(
            &KeyRing::from_secrets(&[("k1", [6; 32])]).unwrap(),
            "login",
            "app",
            b"tx1",
            &t
        ));
        let mut h = HeaderMap::new();
        assert!(origin_ok(&h, "https://app.example.test"));
        h.insert(
            http::header::ORIGIN,
            "https://app.example.test".parse().unwrap(),
        );
        assert!(origin_ok(&h, "https://app.example.test"));
        h.insert(
            http::header::ORIGIN,
            "https://evil.example".parse().unwrap(),
        );
        assert!(!origin_ok(&h, "https://app.example.test"));
        h.insert(
            http::header::ORIGIN,
            "https://app.example.test:444".parse().unwrap(),
        );
        assert!(!origin_ok(&h, "https://app.example.test"));
        // What browsers send under Referrer-Policy: no-referrer.
        h.insert(http::header::ORIGIN, "null".parse().unwrap());
        assert!(origin_ok(&h, "https://app.example.test"));
    }
}
