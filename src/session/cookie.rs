//! The gateway cookie's value: `v1.<key id>.<base64url(nonce ‖ AES-256-GCM(claims) ‖ tag)>`.
//!
//! Nothing is readable outside (the e-mail is encrypted), and nothing is parsed before the AEAD
//! tag has been verified over the raw bytes (docs/security.md#28–#29). The associated data binds
//! the token type, the key id and the app, so a session for one app is worthless on another and a
//! token of another type (restricted session, ...) never opens as a session.

use std::fmt;

use base64::Engine as _;
use ring::aead::{Aad, NONCE_LEN, Nonce};

use super::keys::KeyRing;
use crate::email::Email;
use crate::policy::LoginMethod;
use crate::random::{Random, RandomError};

/// The format tag at the start of every value.
const PREFIX: &str = "v1.";
/// Marks the optional family section after the address. Values sealed before it existed end
/// with the address and open with no family; a build that predates it refuses values that have
/// one (trailing bytes), which sends the person to the login page, never to a panic.
const FAMILY_TAG: u8 = 0xF1;
/// Longest value accepted; longer ones are refused before any decoding.
pub const MAX_VALUE_LEN: usize = 1024;
const TAG_LEN: usize = 16;
/// Tolerated clock difference between replicas, in milliseconds (docs/security.md#30: at most 60
/// s).
pub const SKEW_MS: u64 = 30_000;

/// What a sealed value is for. Part of the associated data: one kind never opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A full session.
    Session = 1,
    /// A session that may only set a new password (temporary-password logins).
    Restricted = 2,
    /// A login transaction (the browser's half of a code, link or password login).
    Login = 3,
    /// A device cookie: this browser logged in as the address before (docs/security.md#39).
    Device = 4,
}

impl TokenKind {
    fn label(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Restricted => "restricted",
            Self::Login => "login",
            Self::Device => "device",
        }
    }
}

/// A 128-bit random session identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", crate::random::hex(&self.0[..4]))
    }
}

impl SessionId {
    /// Hex, for storage.
    pub fn hex(&self) -> String {
        crate::random::hex(&self.0)
    }

    /// The id [`SessionId::hex`] wrote (`None` for anything else).
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(Self(id))
    }
}

/// What a sealed value says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The token type.
    pub(crate) kind: TokenKind,
    /// The session id (fresh at every login).
    pub(crate) id: SessionId,
    /// The app it is valid for (audience).
    pub(crate) app: String,
    /// Who logged in (normalised).
    pub(crate) email: Email,
    /// How.
    pub(crate) method: LoginMethod,
    /// Issue time, Unix milliseconds.
    pub(crate) issued_ms: u64,
    /// Absolute expiry, Unix milliseconds.
    pub(crate) expires_ms: u64,
    /// Last refresh (activity), Unix milliseconds; for the idle timeout.
    pub(crate) refreshed_ms: u64,
    /// The portal session an app session was handed off from: revoking it ends the whole
    /// family (docs/security.md#47). `None` for sessions from a login on the app itself.
    pub(crate) family: Option<SessionId>,
}

impl Claims {
    /// Who logged in (normalised).
    pub fn email(&self) -> &Email {
        &self.email
    }

    /// How they logged in.
    pub fn method(&self) -> LoginMethod {
        self.method
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Absolute expiry, Unix milliseconds.
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// The portal session this session was handed off from, if any.
    pub fn family(&self) -> Option<SessionId> {
        self.family
    }
}

/// Why a value did not open. Callers treat every variant the same way (no session); the
/// variants exist for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Longer than [`MAX_VALUE_LEN`].
    #[error("value too long")]
    TooLong,
    /// Not of the `v1.<kid>.<data>` shape, or not base64.
    #[error("malformed value")]
    Malformed,
    /// No key with that id.
    #[error("unknown key id")]
    UnknownKey,
    /// Authentication failed: tampered, other key, other app, other kind.
    #[error("value does not authenticate")]
    Forged,
    /// Past its expiry (or idle too long).
    #[error("expired")]
    Expired,
    /// Issued in the future beyond the tolerated skew.
    #[error("issued in the future")]
    NotYetValid,
}

fn aad(kind: TokenKind, kid: &str, app: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + kid.len() + app.len());
    a.extend_from_slice(b"otpgate/");
    a.extend_from_slice(kind.label().as_bytes());
    a.extend_from_slice(b"/v1/");
    a.extend_from_slice(kid.as_bytes());
    a.push(b'/');
    a.extend_from_slice(app.as_bytes());
    a
}

fn method_code(m: LoginMethod) -> u8 {
    match m {
        LoginMethod::OneTimePin => 1,
        LoginMethod::OneTimeLink => 2,
        LoginMethod::OneTimeToken => 3,
    }
}

fn method_from(code: u8) -> Option<LoginMethod> {
    match code {
        1 => Some(LoginMethod::OneTimePin),
        2 => Some(LoginMethod::OneTimeLink),
        3 => Some(LoginMethod::OneTimeToken),
        _ => None,
    }
}

/// Sealing failed; the operation fails closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum SealError {
    /// No randomness for the nonce.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The AEAD refused (only for absurd lengths).
    #[error("sealing failed")]
    Crypto,
}

/// Seals `body` as a token of `kind` for `app` with the ring's current key:
/// `v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>`.
pub fn seal_bytes(
    kind: TokenKind,
    app: &str,
    body: &[u8],
    keys: &KeyRing,
    random: &dyn Random,
) -> Result<String, SealError> {
    let key = keys.current();
    let nonce: [u8; NONCE_LEN] = crate::random::bytes(random)?;
    let mut data = Vec::with_capacity(NONCE_LEN + body.len() + TAG_LEN);
    data.extend_from_slice(&nonce);
    data.extend_from_slice(body);
    let tag = key
        .aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(kind, &key.id, app)),
            &mut data[NONCE_LEN..],
        )
        .map_err(|_| SealError::Crypto)?;
    data.extend_from_slice(tag.as_ref());
    let mut out = String::with_capacity(PREFIX.len() + key.id.len() + 1 + data.len() * 4 / 3 + 4);
    out.push_str(PREFIX);
    out.push_str(&key.id);
    out.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&data, &mut out);
    Ok(out)
}

/// The most bytes a value of [`MAX_VALUE_LEN`] decodes to.
const MAX_DECODED_LEN: usize = MAX_VALUE_LEN / 4 * 3;

/// Opens a token of `kind` for `app`; the bytes come back only if the tag verifies.
pub fn open_bytes(
    value: &str,
    kind: TokenKind,
    app: &str,
    keys: &KeyRing,
) -> Result<Vec<u8>, OpenError> {
    let mut buf = [0u8; MAX_DECODED_LEN];
    open_in(value, kind, app, keys, &mut buf).map(<[u8]>::to_vec)
}

/// Opens a token into `buf` (decoded and decrypted in place, no heap allocation: this runs
/// on every request with a cookie) and returns the plaintext, only if the tag verifies.
fn open_in<'b>(
    value: &str,
    kind: TokenKind,
    app: &str,
    keys: &KeyRing,
    buf: &'b mut [u8; MAX_DECODED_LEN],
) -> Result<&'b [u8], OpenError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(OpenError::TooLong);
    }
    let rest = value.strip_prefix(PREFIX).ok_or(OpenError::Malformed)?;
    let (kid, data) = rest.split_once('.').ok_or(OpenError::Malformed)?;
    let key = keys.get(kid).ok_or(OpenError::UnknownKey)?;
    let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(data, &mut buf[..])
        .map_err(|_| OpenError::Malformed)?;
    let buf = buf.get_mut(..len).ok_or(OpenError::Malformed)?;
    if buf.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Malformed);
    }
    let (nonce, sealed) = buf.split_at_mut(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
    let plain = key
        .aead
        .open_in_place(nonce, Aad::from(aad(kind, kid, app)), sealed)
        .map_err(|_| OpenError::Forged)?;
    Ok(plain)
}

/// Seals session `claims` with the ring's current key.
pub fn seal(claims: &Claims, keys: &KeyRing, random: &dyn Random) -> Result<String, SealError> {
    let app = claims.app.as_bytes();
    let email = claims.email.as_str().as_bytes();
    let (Ok(app_len), Ok(email_len)) = (u8::try_from(app.len()), u8::try_from(email.len())) else {
        return Err(SealError::Crypto);
    };
    let mut body = Vec::with_capacity(44 + app.len() + email.len());
    body.push(claims.kind as u8);
    body.extend_from_slice(&claims.id.0);
    body.extend_from_slice(&claims.issued_ms.to_be_bytes());
    body.extend_from_slice(&claims.expires_ms.to_be_bytes());
    body.extend_from_slice(&claims.refreshed_ms.to_be_bytes());
    body.push(method_code(claims.method));
    body.push(app_len);
    body.extend_from_slice(app);
    body.push(email_len);
    body.extend_from_slice(email);
    if let Some(f) = claims.family {
        body.push(FAMILY_TAG);
        body.extend_from_slice(&f.0);
    }
    seal_bytes(claims.kind, &claims.app, &body, keys, random)
}

/// Opens session claims for `app` as `kind`, checking authenticity first, then expiry against
/// `now_ms` (and, when `idle_ms` is set, inactivity).
pub fn open(
    value: &str,
    kind: TokenKind,
    app: &str,
    keys: &KeyRing,
    now_ms: u64,
    idle_ms: Option<u64>,
) -> Result<Claims, OpenError> {
    let claims = authenticate(value, kind, app, keys)?;
    check_times(&claims, now_ms, idle_ms)?;
    Ok(claims)
}

/// The half of [`open`] that depends only on the value and the keys: decoding, the AEAD tag,
/// parsing, and the kind and app the claims name. Its result may be reused for the same value
/// and keys; [`check_times`] may not.
pub(crate) fn authenticate(
    value: &str,
    kind: TokenKind,
    app: &str,
    keys: &KeyRing,
) -> Result<Claims, OpenError> {
    let mut buf = [0u8; MAX_DECODED_LEN];
    let plain = open_in(value, kind, app, keys, &mut buf)?;
    // Authentic from here on: the layout was written by `seal`.
    let claims = parse(plain).ok_or(OpenError::Forged)?;
    if claims.kind != kind || claims.app != app {
        return Err(OpenError::Forged);
    }
    Ok(claims)
}

/// The half of [`open`] that depends on the time: not issued in the future, not past its
/// expiry, not idle too long (docs/security.md#30). Runs on every request, cached or not.
pub(crate) fn check_times(
    claims: &Claims,
    now_ms: u64,
    idle_ms: Option<u64>,
) -> Result<(), OpenError> {
    if claims.issued_ms > now_ms.saturating_add(SKEW_MS) {
        return Err(OpenError::NotYetValid);
    }
    if now_ms > claims.expires_ms.saturating_add(SKEW_MS) {
        return Err(OpenError::Expired);
    }
    if let Some(idle) = idle_ms
        && now_ms
            > claims
                .refreshed_ms
                .saturating_add(idle)
                .saturating_add(SKEW_MS)
    {
        return Err(OpenError::Expired);
    }
    Ok(())
}

fn parse(p: &[u8]) -> Option<Claims> {
    let mut r = Reader(p);
    let kind = match r.byte()? {
        1 => TokenKind::Session,
        2 => TokenKind::Restricted,
        4 => TokenKind::Device,
        _ => return None,
    };
    let id = SessionId(r.take(16)?.try_into().ok()?);
    let issued_ms = r.u64()?;
    let expires_ms = r.u64()?;
    let refreshed_ms = r.u64()?;
    let method = method_from(r.byte()?)?;
    let app_len = usize::from(r.byte()?);
    let app = std::str::from_utf8(r.take(app_len)?).ok()?.to_owned();
    let email_len = usize::from(r.byte()?);
    let email = Email::from_sealed(std::str::from_utf8(r.take(email_len)?).ok()?)?;
    let family = match r.0 {
        [] => None,
        [FAMILY_TAG, rest @ ..] => Some(SessionId(rest.try_into().ok()?)),
        _ => return None,
    };
    Some(Claims {
        kind,
        id,
        app,
        email,
        method,
        issued_ms,
        expires_ms,
        refreshed_ms,
        family,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests;
