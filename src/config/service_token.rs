//! Service tokens as configured (docs/product.md#s4): credentials for scripts and load testers,
//! presented in two request headers instead of a login.

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::Secret;

/// The default header carrying a token's client id.
pub const CLIENT_ID_HEADER: &str = "otpgate-client-id";
/// The default header carrying a token's secret.
pub const CLIENT_SECRET_HEADER: &str = "otpgate-client-secret";
/// How a stored secret hash starts: the algorithm, then 64 hex digits.
pub const HASH_PREFIX: &str = "hmac-sha256:";

/// Every service token and what checking them needs.
#[derive(Debug, Clone)]
pub struct ServiceTokenSettings {
    /// The file holding the key of the secrets' keyed hash (`service_token_key_file`, by
    /// default `<data_dir>/service-token.key`); the same file on every replica.
    pub key_file: PathBuf,
    /// The key as read from `key_file` (base64 of 32 bytes), when the file exists.
    pub key: Option<Secret>,
    /// The header carrying the client id.
    pub client_id_header: HeaderName,
    /// The header carrying the secret.
    pub client_secret_header: HeaderName,
    /// The tokens, in file order.
    pub tokens: Vec<ServiceTokenConfig>,
}

/// One service token.
#[derive(Debug, Clone)]
pub struct ServiceTokenConfig {
    /// What policies (`service_token: NAME`), the audit log and the upstream see.
    pub name: String,
    /// Sent in the client-id header; not a secret.
    pub client_id: String,
    /// One, or two during a rotation.
    pub secrets: Vec<TokenSecret>,
    /// When the token stops working (since the Unix epoch); `None` never.
    pub expires: Option<Duration>,
}

/// A valid secret of a token.
#[derive(Debug, Clone)]
pub enum TokenSecret {
    /// `secret_hash`: the keyed hash of the secret.
    Hash([u8; 32]),
    /// `secret_file`: the secret itself, hashed when the runtime is built.
    Plain(Secret),
}
