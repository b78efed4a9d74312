//! Request-path errors and the one place that turns them into responses.

use http::{Response, StatusCode};

use crate::body::Body;
use crate::gateway::route::HostError;
use crate::pages::Pages;
use crate::path::PathError;
use crate::proxy::ProxyError;

/// Why a request was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The Host is missing or malformed.
    #[error("bad host: {0}")]
    Host(#[from] HostError),
    /// No app serves this host.
    #[error("no app for this host")]
    UnknownHost,
    /// TLS was negotiated for one app and the request names another (SNI/Host mismatch).
    #[error("the TLS name (SNI) belongs to a different app than the Host")]
    Misdirected,
    /// The path is ambiguous.
    #[error("bad path: {0}")]
    Path(#[from] PathError),
    /// The request may not enter (a block policy, no matching policy, or a login that this
    /// build cannot perform yet).
    #[error("forbidden")]
    Forbidden,
    /// A gateway path that does not exist.
    #[error("no such gateway page")]
    NotFound,
    /// The method is not allowed on a gateway page.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A form that is not a small `application/x-www-form-urlencoded` body.
    #[error("malformed form")]
    BadForm,
    /// A store the login needs is unreachable: logins fail closed.
    #[error("a store is unavailable")]
    Unavailable,
    /// Too many open connections (WebSocket tunnels) to take another.
    #[error("too many open connections")]
    Busy,
    /// Something that should not fail did (no randomness, a sealing failure).
    #[error("internal error")]
    Internal,
    /// Upstream problems.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Who is to blame for an error: decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we refuse.
    Client,
    /// The upstream failed.
    Upstream,
    /// The gateway or one of its stores failed.
    Internal,
}

impl GateError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Proxy(ProxyError::Connect(_) | ProxyError::Timeout | ProxyError::Upstream(_)) => {
                Blame::Upstream
            }
            Self::Unavailable | Self::Internal => Blame::Internal,
            _ => Blame::Client,
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Host(_) | Self::Path(_) | Self::BadForm => StatusCode::BAD_REQUEST,
            Self::Unavailable | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UnknownHost | Self::NotFound => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Proxy(p) => match p {
                ProxyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The response for this error. Details stay in the log; the client gets a generic page.
    pub fn into_response(self, pages: &Pages) -> Response<Body> {
        let status = self.status();
        let (title, message) = match &self {
            Self::Host(_) => ("Bad request", "The request did not name a valid host."),
            Self::Path(_) => (
                "Bad request",
                "The request path is ambiguous (encoded slashes, dot segments or control characters) and was refused.",
            ),
            Self::UnknownHost => ("Not found", "This gateway does not serve that host."),
            Self::Misdirected => (
                "Misdirected request",
                "This connection was set up for a different site. Please retry.",
            ),
            Self::Forbidden => ("Access denied", "You do not have access to this page."),
            Self::NotFound => ("Not found", "There is no such page."),
            Self::MethodNotAllowed => (
                "Method not allowed",
                "This page does not accept that method.",
            ),
            Self::Proxy(ProxyError::TooLarge) => (
                "Request too large",
                "The request body is larger than this site accepts.",
            ),
            Self::Proxy(ProxyError::Timeout) => {
                ("Gateway timeout", "The application did not answer in time.")
            }
            Self::BadForm => (
                "Bad request",
                "The form could not be read. Please go back and try again.",
            ),
            Self::Unavailable => (
                "Sign-in unavailable",
                "Signing in is not possible right now. Please try again in a moment.",
            ),
            Self::Internal => ("Something went wrong", "Please try again."),
            Self::Busy => (
                "Busy",
                "Too many connections are open right now. Please try again in a moment.",
            ),
            Self::Proxy(_) => ("Bad gateway", "The application is not reachable right now."),
        };
        pages.error(status, title, message)
    }
}
