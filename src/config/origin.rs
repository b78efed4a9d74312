//! Where each app is reached: the addresses the listeners are bound to and the public origin
//! derived from them. Both the gateway and the command line (`mint-cookie`, mail links) need the
//! same answer, so it is derived here, once, from the config.

use std::net::SocketAddr;

use super::{AppConfig, HostPattern, Origin};

/// The addresses the listeners are bound to (ports resolved when `:0` was asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS.
    pub https: Option<SocketAddr>,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

impl AppConfig {
    /// The app's public origin: its `public_url`, else the HTTPS listener if there is one, else
    /// the HTTP listener, with the app's first host.
    pub fn origin(&self, bound: &BoundAddrs) -> Origin {
        self.public_url
            .clone()
            .unwrap_or_else(|| default_origin(self, bound))
    }
}

fn default_origin(a: &AppConfig, bound: &BoundAddrs) -> Origin {
    let host = match a.hosts.first() {
        Some(HostPattern::Exact(h)) => h.clone(),
        // Validation requires public_url for wildcard-first apps.
        Some(HostPattern::Wildcard(s)) => s.clone(),
        None => "localhost".to_owned(),
    };
    match (bound.https, bound.http) {
        (Some(a), _) => Origin {
            https: true,
            host,
            port: a.port(),
        },
        (None, Some(a)) => Origin {
            https: false,
            host,
            port: a.port(),
        },
        (None, None) => Origin {
            https: true,
            host,
            port: 443,
        },
    }
}
