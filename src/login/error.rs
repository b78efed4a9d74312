//! Why a request for a login page failed. The gateway maps these to responses, in one place,
//! and logs them once with their cause chain.

use crate::body::BoxError;
use crate::random::RandomError;
use crate::session::SealError;
use crate::state::StateError;
use crate::store::StoreError;

use super::secret::HashError;

/// A login page's failure.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// A gateway path that does not exist (or a login method the app does not offer).
    #[error("no such gateway page")]
    NotFound,
    /// The method is not allowed on this page.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A post that is not an `application/x-www-form-urlencoded` form, or asks for a method
    /// the page does not have.
    #[error("malformed form")]
    BadForm,
    /// The form body could not be read (too large, or the connection failed).
    #[error("unreadable form")]
    UnreadableForm(#[source] BoxError),
    /// The ephemeral state (codes, limits) is unreachable: logins fail closed.
    #[error("the login state is unavailable")]
    State(#[from] StateError),
    /// The credentials store is unreachable: logins fail closed.
    #[error("the credentials store is unavailable")]
    Store(#[from] StoreError),
    /// No randomness for a code, token or transaction id.
    #[error("no randomness")]
    Random(#[from] RandomError),
    /// A cookie could not be sealed.
    #[error("cannot seal a cookie")]
    Seal(#[from] SealError),
    /// A chosen password could not be hashed.
    #[error("cannot hash a password")]
    Hash(#[from] HashError),
}
