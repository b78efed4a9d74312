//! `portal_url`: the single sign-on portal's origin. The gateway serves it itself, so it must
//! be reachable through one of its listeners (or a trusted front proxy), and it must not be an
//! app's host: the portal's cookie and pages would otherwise share an origin with an upstream.

use ipnet::IpNet;

use super::super::{AppConfig, HostPattern, Listen, Origin};
use super::{Ctx, is_local};

pub(super) fn portal(
    c: &mut Ctx<'_>,
    url: Option<&str>,
    listen: &Listen,
    trusted_proxies: &[IpNet],
    apps: &[AppConfig],
) -> Option<Origin> {
    let origin = match Origin::parse(url?) {
        Ok(o) => o,
        Err(e) => {
            c.err("portal_url", e);
            return None;
        }
    };
    let listener = if origin.https {
        listen.https
    } else {
        listen.http
    };
    if trusted_proxies.is_empty() {
        match listener {
            None => c.err(
                "portal_url",
                format!(
                    "{origin} is not served by the gateway: no {} listener and no trusted_proxies in front",
                    origin.scheme()
                ),
            ),
            Some(a) if a.port() != 0 && a.port() != origin.port => c.err(
                "portal_url",
                format!(
                    "{origin} is not served by the gateway: its {} listener is on port {} and no trusted_proxies are in front",
                    origin.scheme(),
                    a.port()
                ),
            ),
            Some(_) => {}
        }
    }
    if let Some(app) = apps.iter().find(|a| serves(a, &origin.host)) {
        c.err(
            "portal_url",
            format!(
                "{} is a host of app {:?}; the portal needs a host of its own",
                origin.host, app.name
            ),
        );
    }
    if !origin.https && !is_local(&origin.host) {
        c.warn(
            "portal_url",
            "plain http outside localhost: the portal cookie cannot be Secure (docs/security.md#28)",
        );
    }
    Some(origin)
}

/// Whether `app` answers to `host`.
fn serves(app: &AppConfig, host: &str) -> bool {
    app.hosts.iter().any(|h| match h {
        HostPattern::Exact(e) => e == host,
        HostPattern::Wildcard(suffix) => host
            .strip_suffix(suffix.as_str())
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
    })
}
