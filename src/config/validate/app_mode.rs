//! `apps[].mode` and what each mode needs: a proxied app names its `upstream`; an app behind a
//! front proxy (`forward_auth`) has none, states the origin people see on that proxy, and is
//! reachable only when the proxy is among `trusted_proxies` (docs/security.md#34: the endpoint
//! believes no one else's description of a request).

use super::super::{AppConfig, AppMode};
use super::{Ctx, file};

/// The app's mode, after checking that the keys it needs are there and the ones it ignores are
/// not. The upstream of a proxied app is read by the caller.
pub(super) fn mode(c: &mut Ctx<'_>, at: &str, a: &file::AppFile) -> AppMode {
    let mode = match a.mode.as_deref() {
        None => AppMode::Proxy,
        Some(m) => AppMode::parse(m).unwrap_or_else(|| {
            c.err(
                format!("{at}.mode"),
                format!("unknown mode {m:?} (proxy or forward_auth)"),
            );
            AppMode::Proxy
        }),
    };
    match mode {
        AppMode::Proxy if a.upstream.is_none() => c.err(
            format!("{at}.upstream"),
            "required (or mode: forward_auth, for an app behind its own front proxy)",
        ),
        AppMode::Proxy => {}
        AppMode::ForwardAuth => forward_auth_keys(c, at, a),
    }
    mode
}

fn forward_auth_keys(c: &mut Ctx<'_>, at: &str, a: &file::AppFile) {
    if a.upstream.is_some() {
        c.err(
            format!("{at}.upstream"),
            "not used with mode: forward_auth: the front proxy forwards to the app",
        );
    }
    if a.upstream_ca.is_some() {
        c.err(
            format!("{at}.upstream_ca"),
            "not used with mode: forward_auth",
        );
    }
    // The login pages and the redirects to them must name the front proxy's origin, not the
    // gateway's own listener.
    if a.public_url.is_none() {
        c.err(
            format!("{at}.public_url"),
            "required with mode: forward_auth: the origin people reach the app at",
        );
    }
}

/// Forward-auth apps need their front proxy in `trusted_proxies`, or no request is ever judged.
pub(super) fn front_proxies_trusted(c: &mut Ctx<'_>, apps: &[AppConfig], trusted: usize) {
    if trusted > 0 {
        return;
    }
    if let Some(i) = apps.iter().position(|a| a.mode == AppMode::ForwardAuth) {
        c.err(
            format!("apps[{i}].mode"),
            "forward_auth needs the front proxy's address in trusted_proxies",
        );
    }
}
