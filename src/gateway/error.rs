//! Request-path errors and the one place that turns them into responses. Each stage has its
//! own error enum ([`RouteError`], [`PathError`], [`LoginError`], [`ProxyError`]); the pipeline
//! wraps them here, keeping their causes, and logs each failure once, at the edge.

use std::error::Error as StdError;
use std::fmt;

use http::{Response, StatusCode};

use super::route::{HostError, RouteError};
use crate::body::Body;
use crate::forward_auth::ForwardAuthError;
use crate::login::LoginError;
use crate::pages::Pages;
use crate::path::PathError;
use crate::proxy::ProxyError;

/// Why a request was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The request could not be routed to an app.
    #[error("cannot route the request")]
    Route(#[from] RouteError),
    /// The path is ambiguous.
    #[error("bad path")]
    Path(#[from] PathError),
    /// The request may not enter (a block policy, or no matching policy).
    #[error("forbidden")]
    Forbidden,
    /// Too many open connections (WebSocket tunnels) to take another.
    #[error("too many open connections")]
    Busy,
    /// A gateway page failed.
    #[error("login page")]
    Login(#[from] LoginError),
    /// Upstream problems.
    #[error("proxying")]
    Proxy(#[from] ProxyError),
    /// A front proxy's question to `/.otpgate/auth` could not be answered.
    #[error("forward auth")]
    ForwardAuth(#[from] ForwardAuthError),
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
    /// A shared service (the Redis state) is unreachable; logged where the outage is seen.
    Outage,
}

/// A `Display` of an error followed by its causes: `a: b: c`.
pub fn chain<'a>(e: &'a (dyn StdError + 'static)) -> impl fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn StdError + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut next = self.0.source();
            while let Some(e) = next {
                write!(f, ": {e}")?;
                next = e.source();
            }
            Ok(())
        }
    }
    Chain(e)
}

impl GateError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Proxy(ProxyError::Connect(_) | ProxyError::Timeout | ProxyError::Upstream(_)) => {
                Blame::Upstream
            }
            // The state room logs an outage once when it starts and once when it ends; a line
            // per refused login would flood the log while it lasts.
            Self::Login(LoginError::State(_)) => Blame::Outage,
            Self::Login(
                LoginError::Store(_)
                | LoginError::Random(_)
                | LoginError::Seal(_)
                | LoginError::Hash(_),
            ) => Blame::Internal,
            _ => Blame::Client,
        }
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Route(RouteError::Host(_))
            | Self::Path(_)
            | Self::Login(LoginError::BadForm | LoginError::UnreadableForm(_)) => {
                StatusCode::BAD_REQUEST
            }
            Self::ForwardAuth(e) if !e.is_not_found() => StatusCode::BAD_REQUEST,
            Self::Route(RouteError::UnknownHost)
            | Self::Login(LoginError::NotFound)
            | Self::ForwardAuth(_) => StatusCode::NOT_FOUND,
            Self::Route(RouteError::Misdirected) => StatusCode::MISDIRECTED_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Login(LoginError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            // Logins fail closed while a store is down (docs/security.md#36).
            Self::Busy | Self::Login(LoginError::State(_) | LoginError::Store(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Login(LoginError::Random(_) | LoginError::Seal(_) | LoginError::Hash(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Proxy(ProxyError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Proxy(ProxyError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Proxy(ProxyError::Connect(_) | ProxyError::Upstream(_)) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The response for this error. Details stay in the log; the client gets a generic page.
    pub fn into_response(self, pages: &Pages) -> Response<Body> {
        let (title, message) = self.words();
        pages.error(self.status(), title, message)
    }

    /// The page's title and message.
    fn words(&self) -> (&'static str, &'static str) {
        match self {
            Self::Route(RouteError::Host(HostError::Missing | HostError::Invalid)) => {
                ("Bad request", "The request did not name a valid host.")
            }
            Self::Path(_) => (
                "Bad request",
                "The request path is ambiguous (encoded slashes, dot segments or control characters) and was refused.",
            ),
            Self::Route(RouteError::UnknownHost)
            | Self::ForwardAuth(ForwardAuthError::NotForwardAuth) => {
                ("Not found", "This gateway does not serve that host.")
            }
            Self::Route(RouteError::Misdirected) => (
                "Misdirected request",
                "This connection was set up for a different site. Please retry.",
            ),
            Self::Forbidden => ("Access denied", "You do not have access to this page."),
            Self::Login(LoginError::NotFound)
            | Self::ForwardAuth(ForwardAuthError::ReservedPath) => {
                ("Not found", "There is no such page.")
            }
            Self::ForwardAuth(_) => (
                "Bad request",
                "The front proxy's description of the request could not be used.",
            ),
            Self::Login(LoginError::MethodNotAllowed) => (
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
            Self::Login(LoginError::BadForm | LoginError::UnreadableForm(_)) => (
                "Bad request",
                "The form could not be read. Please go back and try again.",
            ),
            Self::Login(LoginError::State(_) | LoginError::Store(_)) => (
                "Sign-in unavailable",
                "Signing in is not possible right now. Please try again in a moment.",
            ),
            Self::Login(LoginError::Random(_) | LoginError::Seal(_) | LoginError::Hash(_)) => {
                ("Something went wrong", "Please try again.")
            }
            Self::Busy => (
                "Busy",
                "Too many connections are open right now. Please try again in a moment.",
            ),
            Self::Proxy(ProxyError::Connect(_) | ProxyError::Upstream(_)) => {
                ("Bad gateway", "The application is not reachable right now.")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_carries_the_whole_cause_chain() {
        let e = GateError::from(RouteError::from(HostError::Invalid));
        assert_eq!(
            chain(&e).to_string(),
            "cannot route the request: bad host: invalid Host"
        );
    }

    #[test]
    fn store_outages_fail_closed_with_503_and_are_internal() {
        let e = GateError::from(LoginError::Random(crate::random::RandomError));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.blame(), Blame::Internal);
        assert_eq!(GateError::Busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(GateError::Forbidden.blame(), Blame::Client);
        let down = crate::state::StateError::Unavailable(std::sync::Arc::new(
            std::io::Error::other("connection refused"),
        ));
        let e = GateError::from(LoginError::from(down));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.blame(),
            Blame::Outage,
            "logged once per outage, not per login"
        );
    }
}
