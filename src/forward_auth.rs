//! Forward auth (docs/product.md#s4): otpgate as the login service of a front proxy that keeps
//! serving the app itself — nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`.
//! Before forwarding a request, the front proxy asks `/.otpgate/auth` about it and describes it
//! in headers; this room reads that description and shapes the answers. The gateway routes the
//! described host, normalises the described path and asks `access::authorize`, exactly as for a
//! request it proxies itself, so one policy stage decides both.
//!
//! Two styles of description:
//!
//! - Traefik and Caddy: `X-Forwarded-Host` and `X-Forwarded-Uri` (plus `-Proto` and `-Method`).
//!   A missing session is answered `302` to the login page, or `401` JSON for API calls: these
//!   proxies hand a refusal to the client as it is.
//! - nginx: `X-Original-URL` (absolute, or a path with `X-Forwarded-Host`) and
//!   `X-Original-Method`. A missing session is answered `401`, with the login page in
//!   `Location` for page navigations: `auth_request` passes only 2xx, 401 and 403 on, and the
//!   proxy's `error_page 401` turns that into the redirect.
//!
//! `?mode=redirect` or `?mode=status` on the endpoint overrides the choice. The scheme and port
//! of the login page and of `rd` come from the app's `public_url`, never from the description,
//! and the method is not read: policies depend on neither.
//!
//! The description is believed only from `trusted_proxies` (docs/security.md#34); the gateway
//! never hands an untrusted request here. Front proxies copy the client's own headers into the
//! auth request, so a client can add headers of the *other* style, or repeat one: a description
//! that disagrees with itself is refused (`400`), never settled by preferring one source.

use http::header::{CACHE_CONTROL, HeaderName, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Response, StatusCode};

use crate::access::Permitted;
use crate::body::Body;
use crate::config::IdentityHeaders;
use crate::pages::Pages;

/// The endpoint's path on the gateway (stable: front-proxy configs name it).
pub(crate) const AUTH_PATH: &str = "/.otpgate/auth";

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// Why a front proxy's question could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardAuthError {
    /// Neither `X-Forwarded-Host` nor an absolute `X-Original-URL` names the host.
    #[error("no forwarded host (X-Forwarded-Host, or an absolute X-Original-URL)")]
    NoHost,
    /// Neither `X-Forwarded-Uri` nor `X-Original-URL` gives the path.
    #[error("no forwarded URI (X-Forwarded-Uri or X-Original-URL)")]
    NoUri,
    /// A description header came more than once.
    #[error("{0} is repeated")]
    Repeated(&'static str),
    /// Both styles describe the request.
    #[error("both X-Forwarded-Uri and X-Original-URL are present")]
    TwoStyles,
    /// `X-Forwarded-Host` and the host of `X-Original-URL` differ.
    #[error("X-Forwarded-Host and the host of X-Original-URL differ")]
    HostsDisagree,
    /// A header or the `mode` parameter could not be read.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The described host belongs to an app the gateway proxies itself.
    #[error("the app is not served with mode: forward_auth")]
    NotForwardAuth,
    /// The described path is one of the gateway's own pages, which no app is ever sent.
    #[error("the path is under the gateway's reserved prefix")]
    ReservedPath,
}

impl ForwardAuthError {
    /// Whether the answer is "no such thing here" (`404`) rather than a bad question (`400`).
    pub fn is_not_found(self) -> bool {
        matches!(self, Self::NotForwardAuth | Self::ReservedPath)
    }
}

/// How a missing session is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `401` with the login page in `Location` (nginx).
    Status,
    /// `302` to the login page, or `401` JSON for API calls, as in proxy mode (Traefik, Caddy).
    Redirect,
}

/// The request a front proxy asks about, borrowed from the auth request's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Original<'a> {
    /// The host as sent (perhaps with a port); the gateway normalises and routes it.
    pub(crate) host: &'a str,
    /// The host of an absolute `X-Original-URL` when `X-Forwarded-Host` was given too: the two
    /// must name the same host.
    pub(crate) also_host: Option<&'a str>,
    /// The path, not yet normalised.
    pub(crate) path: &'a str,
    /// The query, if any (for `rd`).
    pub(crate) query: Option<&'a str>,
    /// How to answer without a session.
    pub(crate) answer: Answer,
}

/// Reads the description of the original request from the auth request's `headers` and the
/// endpoint's own `query` (`mode=`).
pub(crate) fn describe<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Original<'a>, ForwardAuthError> {
    let forwarded_host = one(headers, &X_FORWARDED_HOST, "X-Forwarded-Host")?;
    let forwarded_uri = one(headers, &X_FORWARDED_URI, "X-Forwarded-Uri")?;
    let original_url = one(headers, &X_ORIGINAL_URL, "X-Original-URL")?;
    let (url_host, path, query_part, default) = match (forwarded_uri, original_url) {
        (Some(_), Some(_)) => return Err(ForwardAuthError::TwoStyles),
        (None, None) => return Err(ForwardAuthError::NoUri),
        (Some(uri), None) => {
            let (path, q) = origin_form(uri, "X-Forwarded-Uri")?;
            (None, path, q, Answer::Redirect)
        }
        (None, Some(url)) => {
            let (host, path, q) = original_url_parts(url)?;
            (host, path, q, Answer::Status)
        }
    };
    let (host, also_host) = match (forwarded_host, url_host) {
        (Some(h), other) => (h, other),
        (None, Some(h)) => (h, None),
        (None, None) => return Err(ForwardAuthError::NoHost),
    };
    if host.is_empty() {
        return Err(ForwardAuthError::NoHost);
    }
    Ok(Original {
        host,
        also_host,
        path,
        query: query_part,
        answer: answer(query, default)?,
    })
}

/// The one value of a description header: absent, or exactly once and readable.
fn one<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'a str>, ForwardAuthError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ForwardAuthError::Malformed(label)),
        (Some(_), Some(_)) => Err(ForwardAuthError::Repeated(label)),
    }
}

/// `/path?query` as a request line carries it: no fragment, no spaces.
fn origin_form<'a>(
    uri: &'a str,
    label: &'static str,
) -> Result<(&'a str, Option<&'a str>), ForwardAuthError> {
    if !uri.starts_with('/') || uri.bytes().any(|b| b == b'#' || b == b' ') {
        return Err(ForwardAuthError::Malformed(label));
    }
    Ok(match uri.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (uri, None),
    })
}

/// `X-Original-URL`: `http(s)://authority/path?query`, or a path alone. Split by hand rather
/// than parsed with a URL parser, which would resolve dot segments and hide the very spellings
/// the path check must see (docs/security.md#35).
fn original_url_parts(url: &str) -> Result<(Option<&str>, &str, Option<&str>), ForwardAuthError> {
    const LABEL: &str = "X-Original-URL";
    if url.starts_with('/') {
        let (path, query) = origin_form(url, LABEL)?;
        return Ok((None, path, query));
    }
    let rest = strip_prefix_ignore_case(url, "https://")
        .or_else(|| strip_prefix_ignore_case(url, "http://"))
        .ok_or(ForwardAuthError::Malformed(LABEL))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(ForwardAuthError::Malformed(LABEL));
    }
    let (path, query) = match tail.strip_prefix('?') {
        // `http://host?q` has the root as its path.
        Some(q) if !q.contains(['#', ' ']) => ("/", Some(q)),
        Some(_) => return Err(ForwardAuthError::Malformed(LABEL)),
        None if tail.is_empty() => ("/", None),
        None => origin_form(tail, LABEL)?,
    };
    Ok((Some(authority), path, query))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The answer style: `mode=` on the endpoint, else the style of the description.
fn answer(query: Option<&str>, default: Answer) -> Result<Answer, ForwardAuthError> {
    let Some(q) = query else {
        return Ok(default);
    };
    match url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "mode") {
        None => Ok(default),
        Some((_, v)) => match &*v {
            "redirect" => Ok(Answer::Redirect),
            "status" => Ok(Answer::Status),
            _ => Err(ForwardAuthError::Malformed("mode parameter")),
        },
    }
}

/// `200`: the front proxy may forward the request. It carries the identity headers under the
/// app's names (`X-Otpgate-*` by default) for the proxy to copy upstream (none after a bypass
/// policy), the signed identity assertion when it is switched on (docs/product.md#s4), and the
/// refreshed session cookie when one is due.
pub(crate) fn allowed(mut permit: Permitted, names: &IdentityHeaders) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    let h = r.headers_mut();
    if let Some(id) = permit.identity() {
        h.insert(names.email.clone(), id.email.clone());
        h.insert(names.user.clone(), id.user.clone());
        h.insert(names.groups.clone(), id.groups.clone());
        if let Some((name, token)) = &id.assertion {
            h.insert(name.clone(), token.clone());
        }
    } else if let Some(user) = permit.service_user() {
        // A service token: only the user header, `service:<name>`, and no assertion (it names
        // a person who logged in), as in proxy mode.
        h.insert(names.user.clone(), user.clone());
    }
    if let Some(cookie) = permit.take_refreshed() {
        h.append(SET_COOKIE, cookie);
    }
    // The answer is about one person's request: no cache may keep it.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    r
}

/// `401` for a front proxy that redirects by itself (nginx), with the JSON body proxy mode
/// gives API calls. For a page navigation the login page with `rd` is also in `Location`, for
/// `auth_request_set` to pick up; API calls and subresources (`wants_json`) have none, so the
/// proxy keeps their 401 rather than send a script, or a favicon fetch, to a login page — which
/// would also start a new login and void the form being filled in.
pub(crate) fn login_status(pages: &Pages, login_url: &str, navigation: bool) -> Response<Body> {
    let mut r = pages.json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "login_required", "login_url": login_url }),
    );
    if navigation && let Ok(v) = HeaderValue::from_str(login_url) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_both_styles() {
        let h = headers(&[
            ("x-forwarded-host", "App.test:8443"),
            ("x-forwarded-uri", "/a/b?x=1&y"),
            ("x-forwarded-proto", "https"),
        ]);
        let o = describe(&h, None).unwrap();
        assert_eq!(
            (o.host, o.also_host, o.path, o.query, o.answer),
            (
                "App.test:8443",
                None,
                "/a/b",
                Some("x=1&y"),
                Answer::Redirect
            )
        );
        let h = headers(&[("x-original-url", "HTTP://app.test:8080/docs?q")]);
        let o = describe(&h, None).unwrap();
        assert_eq!(
            (o.host, o.path, o.query, o.answer),
            ("app.test:8080", "/docs", Some("q"), Answer::Status)
        );
        for (url, path, query) in [
            ("http://app.test", "/", None),
            ("http://app.test?q=1", "/", Some("q=1")),
            ("https://app.test/", "/", None),
        ] {
            let h = headers(&[("x-original-url", url)]);
            let o = describe(&h, None).unwrap();
            assert_eq!(
                (o.host, o.path, o.query),
                ("app.test", path, query),
                "{url}"
            );
        }
        // A path alone needs the host from X-Forwarded-Host; with both, both are kept to compare.
        let h = headers(&[("x-original-url", "/x"), ("x-forwarded-host", "app.test")]);
        assert_eq!(describe(&h, None).unwrap().host, "app.test");
        let h = headers(&[
            ("x-original-url", "http://a.test/x"),
            ("x-forwarded-host", "b.test"),
        ]);
        let o = describe(&h, None).unwrap();
        assert_eq!((o.host, o.also_host), ("b.test", Some("a.test")));
    }

    #[test]
    fn a_description_that_disagrees_with_itself_is_refused() {
        use ForwardAuthError as E;
        let cases: &[(&[(&'static str, &'static str)], E)] = &[
            (&[("x-forwarded-uri", "/x")], E::NoHost),
            (&[("x-original-url", "/x")], E::NoHost),
            (&[("x-forwarded-host", "app.test")], E::NoUri),
            (
                &[
                    ("x-forwarded-host", "app.test"),
                    ("x-forwarded-uri", "/public"),
                    ("x-original-url", "http://app.test/admin"),
                ],
                E::TwoStyles,
            ),
            (
                &[
                    ("x-forwarded-host", "app.test"),
                    ("x-forwarded-uri", "/public"),
                    ("x-forwarded-uri", "/admin"),
                ],
                E::Repeated("X-Forwarded-Uri"),
            ),
            (
                &[
                    ("x-forwarded-host", "app.test"),
                    ("x-forwarded-host", "other.test"),
                    ("x-forwarded-uri", "/"),
                ],
                E::Repeated("X-Forwarded-Host"),
            ),
            (
                &[("x-forwarded-host", "app.test"), ("x-forwarded-uri", "x")],
                E::Malformed("X-Forwarded-Uri"),
            ),
            (
                &[
                    ("x-forwarded-host", "app.test"),
                    ("x-forwarded-uri", "/a#b"),
                ],
                E::Malformed("X-Forwarded-Uri"),
            ),
            (
                &[("x-original-url", "ftp://app.test/")],
                E::Malformed("X-Original-URL"),
            ),
            (
                &[("x-original-url", "http://user@app.test/")],
                E::Malformed("X-Original-URL"),
            ),
            (
                &[("x-original-url", "http:///x")],
                E::Malformed("X-Original-URL"),
            ),
            (
                &[("x-forwarded-host", ""), ("x-forwarded-uri", "/")],
                E::NoHost,
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(
                describe(&headers(pairs), None).err(),
                Some(*want),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn the_mode_parameter_overrides_the_style() {
        let traefik = headers(&[("x-forwarded-host", "a.test"), ("x-forwarded-uri", "/")]);
        let nginx = headers(&[("x-original-url", "http://a.test/")]);
        let mode = |h: &HeaderMap, q: Option<&str>| describe(h, q).map(|o| o.answer);
        assert_eq!(mode(&nginx, Some("mode=redirect")), Ok(Answer::Redirect));
        assert_eq!(mode(&traefik, Some("mode=status")), Ok(Answer::Status));
        assert_eq!(mode(&traefik, Some("other=1")), Ok(Answer::Redirect));
        assert_eq!(
            mode(&nginx, Some("mode=teapot")),
            Err(ForwardAuthError::Malformed("mode parameter"))
        );
    }
}
