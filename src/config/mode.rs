//! How an app is served: proxied by the gateway, or behind a front proxy of the operator's that
//! asks the gateway's forward-auth endpoint about each request (docs/product.md#s4).

use std::fmt;

use super::AppConfig;

/// The `mode` of an app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppMode {
    /// The gateway forwards allowed requests to the app's `upstream`.
    #[default]
    Proxy,
    /// A front proxy (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`) forwards
    /// them and asks `/.otpgate/auth` first; the gateway serves only the pages under
    /// `/.otpgate/` for this app and never proxies it.
    ForwardAuth,
}

impl AppMode {
    /// The mode written as `text` in the config file, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "proxy" => Some(Self::Proxy),
            "forward_auth" => Some(Self::ForwardAuth),
            _ => None,
        }
    }
}

impl fmt::Display for AppMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Proxy => "proxy",
            Self::ForwardAuth => "forward_auth",
        })
    }
}

impl AppConfig {
    /// How the app is served, as `check-config` and the start-up log show it.
    pub fn served(&self) -> String {
        match self.mode {
            AppMode::Proxy => format!("proxy to {}", self.upstream),
            AppMode::ForwardAuth => "forward_auth (its front proxy asks /.otpgate/auth)".to_owned(),
        }
    }
}
