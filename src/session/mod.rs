//! "Who is this?": the gateway cookie, its keys, and revocation.

pub mod cookie;
pub mod keys;
mod opened;
pub mod revocation;
pub mod service_token;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

pub use cookie::{Claims, OpenError, SealError, SessionId, TokenKind};
pub use keys::KeyRing;
pub use revocation::Revocations;

use crate::email::Email;
use crate::policy::LoginMethod;
use crate::random::Random;

/// Cookie name on apps served over plain HTTP (development).
pub const COOKIE_PLAIN: &str = "otpgate";
/// Cookie name on apps served over HTTPS: the `__Host-` prefix makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`, so sibling hosts cannot plant it.
pub const COOKIE_HOST: &str = "__Host-otpgate";

/// Login-transaction cookie names (see `login::tx`).
pub const LOGIN_COOKIE_HOST: &str = "__Host-otpgate-login";
/// Login-transaction cookie name on plain-http apps.
pub const LOGIN_COOKIE_PLAIN: &str = "otpgate-login";

/// The restricted session of a temporary-password login (its only use is choosing a password).
pub const RESTRICTED_COOKIE_HOST: &str = "__Host-otpgate-pw";
/// The restricted session's cookie name on plain-http apps.
pub const RESTRICTED_COOKIE_PLAIN: &str = "otpgate-pw";

/// The device cookie: names the address this browser logged in as, so the account's limits
/// treat it as a known client (docs/security.md#39).
pub const DEVICE_COOKIE_HOST: &str = "__Host-otpgate-device";
/// The device cookie's name on plain-http apps.
pub const DEVICE_COOKIE_PLAIN: &str = "otpgate-device";

/// The single sign-on portal's session cookie (docs/security.md#47).
pub const PORTAL_COOKIE_HOST: &str = "__Host-otpgate-portal";
/// The portal session cookie's name on a plain-http portal.
pub const PORTAL_COOKIE_PLAIN: &str = "otpgate-portal";

/// The hand-off nonce an app sets before sending the browser to the portal: only the browser
/// holding it can redeem the code that comes back (docs/security.md#44).
pub const HANDOFF_COOKIE_HOST: &str = "__Host-otpgate-handoff";
/// The hand-off nonce's cookie name on plain-http apps.
pub const HANDOFF_COOKIE_PLAIN: &str = "otpgate-handoff";

/// Every cookie name the gateway owns.
pub const GATEWAY_COOKIES: [&str; 12] = [
    HANDOFF_COOKIE_HOST,
    HANDOFF_COOKIE_PLAIN,
    PORTAL_COOKIE_HOST,
    PORTAL_COOKIE_PLAIN,
    COOKIE_HOST,
    COOKIE_PLAIN,
    LOGIN_COOKIE_HOST,
    LOGIN_COOKIE_PLAIN,
    RESTRICTED_COOKIE_HOST,
    RESTRICTED_COOKIE_PLAIN,
    DEVICE_COOKIE_HOST,
    DEVICE_COOKIE_PLAIN,
];

/// Removes `Set-Cookie` headers of an upstream response that would set one of the gateway's own
/// cookies: an app (or a header it reflects) must not plant a session in a visitor's browser.
pub fn strip_gateway_set_cookies(headers: &mut HeaderMap) {
    let set_cookie = http::header::SET_COOKIE;
    let planted = |v: &HeaderValue| {
        let name = v
            .to_str()
            .map_or("", |s| s.split_once('=').map_or(s, |(k, _)| k).trim());
        GATEWAY_COOKIES.iter().any(|c| c.eq_ignore_ascii_case(name))
    };
    if !headers.get_all(&set_cookie).iter().any(planted) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(&set_cookie)
        .iter()
        .filter(|v| !planted(v))
        .cloned()
        .collect();
    headers.remove(&set_cookie);
    for v in kept {
        headers.append(&set_cookie, v);
    }
}

/// The cookie name for an app whose public origin is (or is not) https.
pub fn cookie_name(https: bool) -> &'static str {
    if https { COOKIE_HOST } else { COOKIE_PLAIN }
}

/// Why no session could be read from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No gateway cookie.
    #[error("no session cookie")]
    Missing,
    /// A cookie that does not open.
    #[error("invalid session cookie: {0}")]
    Invalid(#[from] OpenError),
    /// A session ended on the server.
    #[error("session revoked")]
    Revoked,
}

impl SessionError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(OpenError::Expired) => "expired",
            Self::Invalid(_) => "invalid",
            Self::Revoked => "revoked",
        }
    }
}

/// Issues and opens sessions.
#[derive(Debug)]
pub struct Sessions {
    keys: ArcSwap<KeyRing>,
    revocations: Arc<Revocations>,
    random: Arc<dyn Random>,
    /// Cookies opened before, so a repeated value skips decoding and decryption.
    opened: opened::Opened,
}

impl Sessions {
    /// A session service with these keys.
    pub fn new(keys: KeyRing, random: Arc<dyn Random>) -> Self {
        Self {
            keys: ArcSwap::from_pointee(keys),
            revocations: Arc::default(),
            random,
            opened: opened::Opened::default(),
        }
    }

    /// Replaces the keys (config reload). Cookies opened under the old keys are forgotten:
    /// one sealed with a key no longer listed must stop opening.
    pub fn replace_keys(&self, keys: KeyRing) {
        self.keys.store(Arc::new(keys));
        self.opened.clear();
    }

    /// The current keys.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeyRing>> {
        self.keys.load()
    }

    /// The revocation cache.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The revocation cache, shared (for long-lived tunnels).
    pub fn revocations_arc(&self) -> Arc<Revocations> {
        self.revocations.clone()
    }

    /// Issues a new session with a fresh random id (docs/security.md#32) for `app`.
    pub fn issue(
        &self,
        kind: TokenKind,
        app: &str,
        email: Email,
        method: LoginMethod,
        lifetime: Duration,
        now_ms: u64,
    ) -> Result<(Claims, String), SealError> {
        self.issue_in(kind, app, email, method, lifetime, now_ms, None)
    }

    /// Like [`Sessions::issue`], for a session of the family of the portal session `family`
    /// (a hand-off): it ends when that family is revoked.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_in(
        &self,
        kind: TokenKind,
        app: &str,
        email: Email,
        method: LoginMethod,
        lifetime: Duration,
        now_ms: u64,
        family: Option<SessionId>,
    ) -> Result<(Claims, String), SealError> {
        let id = SessionId(crate::random::bytes(self.random.as_ref())?);
        let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        let claims = Claims {
            kind,
            id,
            app: app.to_owned(),
            email,
            method,
            issued_ms: now_ms,
            expires_ms: now_ms.saturating_add(lifetime_ms),
            refreshed_ms: now_ms,
            family,
        };
        let value = cookie::seal(&claims, &self.keys.load(), self.random.as_ref())?;
        Ok((claims, value))
    }

    /// Re-seals a session with a new activity time (idle timeout), same id and expiry.
    pub fn refresh(&self, claims: &Claims, now_ms: u64) -> Result<String, SealError> {
        let mut c = claims.clone();
        c.refreshed_ms = now_ms;
        cookie::seal(&c, &self.keys.load(), self.random.as_ref())
    }

    /// The session of a request for `app`: the first `name` cookie that opens and is not
    /// revoked. Several cookies of that name are tried (at most four).
    pub fn from_headers(
        &self,
        headers: &HeaderMap,
        name: &str,
        app: &str,
        now_ms: u64,
        idle: Option<Duration>,
    ) -> Result<Claims, SessionError> {
        self.of_kind(headers, TokenKind::Session, name, app, now_ms, idle)
    }

    /// Like [`Sessions::from_headers`], sharing the claims and their header value with the
    /// cache of opened cookies instead of copying them (the proxied request's path).
    pub fn from_headers_shared(
        &self,
        headers: &HeaderMap,
        name: &str,
        app: &str,
        now_ms: u64,
        idle: Option<Duration>,
    ) -> Result<Accepted, SessionError> {
        self.find(headers, TokenKind::Session, name, app, now_ms, idle)
    }

    /// Like [`Sessions::from_headers`] for a token of another kind (the restricted session).
    pub fn of_kind(
        &self,
        headers: &HeaderMap,
        kind: TokenKind,
        name: &str,
        app: &str,
        now_ms: u64,
        idle: Option<Duration>,
    ) -> Result<Claims, SessionError> {
        self.find(headers, kind, name, app, now_ms, idle)
            .map(|a| Arc::unwrap_or_clone(a.claims))
    }

    fn find(
        &self,
        headers: &HeaderMap,
        kind: TokenKind,
        name: &str,
        app: &str,
        now_ms: u64,
        idle: Option<Duration>,
    ) -> Result<Accepted, SessionError> {
        let idle_ms = idle.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let keys = self.keys.load();
        let mut last = SessionError::Missing;
        for value in cookie_values(headers, name).take(4) {
            match self.open(value, kind, app, &keys, now_ms, idle_ms) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One cookie value: its claims from the cache of opened cookies, or opened and then
    /// cached. The time and the revocations are checked either way, on every request.
    fn open(
        &self,
        value: &str,
        kind: TokenKind,
        app: &str,
        keys: &Arc<KeyRing>,
        now_ms: u64,
        idle_ms: Option<u64>,
    ) -> Result<Accepted, SessionError> {
        let (accepted, cached) = match self.opened.get(value, kind, app, keys) {
            Some(a) => (a, true),
            None => (
                Accepted::new(Arc::new(cookie::authenticate(value, kind, app, keys)?)),
                false,
            ),
        };
        cookie::check_times(&accepted.claims, now_ms, idle_ms)?;
        if self.revocations.is_revoked(&accepted.claims) {
            return Err(SessionError::Revoked);
        }
        if !cached {
            self.opened.insert(value, keys, &accepted);
        }
        Ok(accepted)
    }
}

/// A session cookie that opened and was accepted: its claims, and its address as a header
/// value, both shared with the cache of opened cookies. The value is made once per opened
/// cookie, so a request clones it instead of checking and copying the address again.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// What the cookie says.
    pub claims: Arc<Claims>,
    /// The normalised address, for the email identity header (docs/product.md#s4); empty
    /// should it not be a valid header value (addresses are ASCII, docs/security.md#8).
    pub email_header: HeaderValue,
}

impl Accepted {
    pub(crate) fn new(claims: Arc<Claims>) -> Self {
        let email_header = HeaderValue::from_str(claims.email.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Self {
            claims,
            email_header,
        }
    }
}

/// Values of the cookies called `name` in a request's `Cookie` headers, in order.
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    // A header's text has no whitespace but spaces and tabs (`HeaderValue::to_str`), where the
    // ASCII trims do what `str::trim` does, byte by byte instead of char by char.
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim_ascii_start().split_once('=')?;
            (k.trim_ascii_end() == name).then(|| v.trim_ascii().trim_matches('"'))
        })
}

/// What becomes of a request's `Cookie` headers on the way upstream: the gateway's cookies
/// go, the others stay (docs/security.md#34).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieEdit {
    /// No gateway cookie: the headers go as they are.
    Keep,
    /// Only gateway cookies: no `Cookie` header at all.
    Remove,
    /// The other cookies, in one header.
    Replace(HeaderValue),
}

impl CookieEdit {
    /// The edit for `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        let mentions = headers
            .get_all(COOKIE)
            .iter()
            .any(|v| v.as_bytes().windows(7).any(|w| w == b"otpgate"));
        if !mentions {
            return Self::Keep;
        }
        // The common case, a client sending only the gateway's cookie: nothing to rebuild.
        let mut values = headers.get_all(COOKIE).iter();
        if let (Some(only), None) = (values.next(), values.next())
            && let Ok(v) = only.to_str()
            && !v.contains(';')
            && GATEWAY_COOKIES.contains(&v.split_once('=').map_or(v, |(k, _)| k).trim())
        {
            return Self::Remove;
        }
        let kept: Vec<&str> = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            .filter(|pair| {
                let name = pair.split_once('=').map_or(*pair, |(k, _)| k).trim();
                !pair.is_empty() && !GATEWAY_COOKIES.contains(&name)
            })
            .collect();
        match HeaderValue::from_str(&kept.join("; ")) {
            Ok(v) if !kept.is_empty() => Self::Replace(v),
            _ => Self::Remove,
        }
    }

    /// Makes the edit in `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        match self {
            Self::Keep => {}
            Self::Remove => {
                headers.remove(COOKIE);
            }
            Self::Replace(v) => {
                headers.insert(COOKIE, v);
            }
        }
    }
}

/// Removes the gateway's cookies (both names) from the `Cookie` headers, keeping the others,
/// so the upstream never sees a session (docs/security.md#34).
pub fn strip_gateway_cookies(headers: &mut HeaderMap) {
    CookieEdit::of(headers).apply(headers);
}

/// `Set-Cookie` for a session (docs/product.md#s4, docs/security.md#28): `HttpOnly`,
/// `SameSite=Lax`, `Path=/`, `Max-Age`, and `Secure` when the app's public origin is https.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> Option<HeaderValue> {
    let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    let c = ::cookie::Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(::cookie::SameSite::Lax)
        .secure(secure)
        .max_age(::cookie::time::Duration::seconds(secs))
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

/// `Set-Cookie` that deletes the session cookie.
pub fn clear_cookie(name: &str, secure: bool) -> Option<HeaderValue> {
    set_cookie(name, "", Duration::ZERO, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, c.parse().unwrap());
        }
        h
    }

    #[test]
    fn sec_28_cookie_attributes() {
        let v = set_cookie(COOKIE_HOST, "v1.k.abc", Duration::from_secs(3600), true).unwrap();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("__Host-otpgate=v1.k.abc;"), "{s}");
        for attr in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(s.contains(attr), "{attr} missing in {s}");
        }
        assert!(!s.contains("Domain"));
        let v = set_cookie(COOKIE_PLAIN, "x", Duration::from_secs(60), false).unwrap();
        assert!(!v.to_str().unwrap().contains("Secure"));
        assert!(
            clear_cookie(COOKIE_HOST, true)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        assert_eq!(cookie_name(true), "__Host-otpgate");
        assert_eq!(cookie_name(false), "otpgate");
    }

    #[test]
    fn sec_32_every_session_gets_a_fresh_random_id() {
        let keys = KeyRing::from_secrets(&[("k1", [3; 32])]).unwrap();
        let s = Sessions::new(keys, crate::random::system());
        let email = Email::parse("a@b.example").unwrap();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..100 {
            let (c, v) = s
                .issue(
                    TokenKind::Session,
                    "app",
                    email.clone(),
                    LoginMethod::OneTimePin,
                    Duration::from_secs(60),
                    1,
                )
                .unwrap();
            assert!(ids.insert(c.id), "session id reused");
            assert_eq!(
                s.from_headers(
                    &headers(&[&format!("otpgate={v}")]),
                    COOKIE_PLAIN,
                    "app",
                    2,
                    None
                ),
                Ok(c)
            );
        }
    }

    #[test]
    fn upstreams_cannot_set_the_gateways_cookies() {
        let mut h = HeaderMap::new();
        for v in [
            "a=1; Path=/",
            "__Host-otpgate=v1.x; Path=/; Secure",
            "OTPGATE=v1.y",
            "otpgate-login=z",
            "b=2",
        ] {
            h.append(http::header::SET_COOKIE, v.parse().unwrap());
        }
        strip_gateway_set_cookies(&mut h);
        let left: Vec<&str> = h
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1; Path=/", "b=2"]);
    }

    #[test]
    fn cookie_values_take_every_separator_and_keep_the_order() {
        let h = headers(&[
            "a=1;otpgate=first; b=2",
            "otpgate= \"second\" ;\totpgate\t=third",
            "x=otpgate=no; otpgatex=no; xotpgate=no; otpgate",
            "otpgate=fourth;otpgate=",
        ]);
        assert_eq!(
            cookie_values(&h, COOKIE_PLAIN).collect::<Vec<_>>(),
            ["first", "second", "third", "fourth", ""]
        );
        // The same as splitting and trimming with `str`'s own methods.
        let plain = |h: &HeaderMap| -> Vec<String> {
            h.get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k.trim() == COOKIE_PLAIN).then(|| v.trim().trim_matches('"').to_owned())
                })
                .collect()
        };
        assert_eq!(
            cookie_values(&h, COOKIE_PLAIN).collect::<Vec<_>>(),
            plain(&h)
        );
        // A header with a byte `to_str` refuses is skipped whole, its neighbours are not.
        let mut h = headers(&["otpgate=before"]);
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"otpgate=bad\xff; otpgate=also").unwrap(),
        );
        h.append(COOKIE, HeaderValue::from_static("otpgate=after"));
        assert_eq!(
            cookie_values(&h, COOKIE_PLAIN).collect::<Vec<_>>(),
            ["before", "after"]
        );
    }

    #[test]
    fn finds_values_among_other_cookies() {
        let h = headers(&["theme=dark; __Host-otpgate=v1.a.b", "otpgate=v1.c.d; x=1"]);
        assert_eq!(
            cookie_values(&h, COOKIE_HOST).collect::<Vec<_>>(),
            ["v1.a.b"]
        );
        assert_eq!(
            cookie_values(&h, COOKIE_PLAIN).collect::<Vec<_>>(),
            ["v1.c.d"]
        );
        assert_eq!(cookie_values(&h, "otpgatex").count(), 0);
    }

    #[test]
    fn sec_34_gateway_cookies_are_stripped_and_others_kept() {
        let mut h = headers(&[
            "theme=dark; __Host-otpgate=v1.a.b; lang=en",
            "otpgate=v1.c.d",
        ]);
        strip_gateway_cookies(&mut h);
        assert_eq!(
            h.get_all(COOKIE).iter().collect::<Vec<_>>(),
            ["theme=dark; lang=en"]
        );
        let mut h = headers(&["otpgate=v1.c.d"]);
        strip_gateway_cookies(&mut h);
        assert!(h.get(COOKIE).is_none());
        let mut h = headers(&["nototpgate=1; a=b"]);
        strip_gateway_cookies(&mut h);
        assert_eq!(h[COOKIE], "nototpgate=1; a=b");
        // A lone cookie is removed only when it is the gateway's.
        for lone in ["nototpgate=1", "otpgate-theme=dark", " otpgate"] {
            let mut h = headers(&[lone]);
            strip_gateway_cookies(&mut h);
            let kept = lone.trim() != "otpgate";
            assert_eq!(h.get(COOKIE).is_some(), kept, "{lone}");
        }
    }
}
