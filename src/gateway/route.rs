//! Routing: which app a request is for, from its Host (port ignored) and the TLS SNI name; or
//! the single sign-on portal, a host the gateway serves itself and that is no app's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use http::header::HOST;
use http::{HeaderMap, Uri};

use crate::config::HostPattern;

/// FNV-1a: host names are short and the table is only read per request, never filled from
/// one, so SipHash's flooding resistance buys nothing here and costs ~200 instructions a
/// request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Table = HashMap<String, usize, BuildHasherDefault<Fnv>>;

/// Host names → app index.
#[derive(Debug, Default)]
pub struct Router {
    exact: Table,
    wildcard: Table,
    portal: Option<String>,
}

impl Router {
    /// Builds the table from each app's host patterns (validated unique).
    pub fn new<'a>(apps: impl IntoIterator<Item = &'a [HostPattern]>) -> Self {
        let mut r = Self::default();
        for (i, hosts) in apps.into_iter().enumerate() {
            for h in hosts {
                match h {
                    HostPattern::Exact(name) => r.exact.insert(name.clone(), i),
                    HostPattern::Wildcard(suffix) => r.wildcard.insert(suffix.clone(), i),
                };
            }
        }
        r
    }

    /// The same table, with the portal's host (validated to be no app's).
    #[must_use]
    pub fn with_portal(mut self, host: Option<&str>) -> Self {
        self.portal = host.map(str::to_owned);
        self
    }

    /// The app serving a normalised host: an exact name first, then the longest wildcard
    /// suffix (`*.corp.example` covers `a.corp.example` and `a.b.corp.example`).
    pub fn find(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(i) = self.wildcard.get(parent) {
                return Some(*i);
            }
            rest = parent;
        }
        None
    }
}

/// Why a request could not be routed to an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The Host is missing or malformed.
    #[error("bad host")]
    Host(#[from] HostError),
    /// No app serves this host.
    #[error("no app for this host")]
    UnknownHost,
    /// TLS was negotiated for one app and the request names another (SNI/Host mismatch).
    #[error("the TLS name (SNI) belongs to a different app than the Host")]
    Misdirected,
}

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The app at this index.
    App(usize),
    /// The single sign-on portal.
    Portal,
}

/// What a request is for: the portal when its Host is the portal's (and the TLS name, if any,
/// no app's), else the app of [`app_index`].
pub fn target(
    router: &Router,
    uri: &Uri,
    headers: &HeaderMap,
    sni: Option<&str>,
) -> Result<Target, RouteError> {
    if let Some(portal) = &router.portal {
        let host = request_host(uri, headers)?;
        if host == portal.as_str() {
            if sni.is_some_and(|s| router.find(&s.to_ascii_lowercase()).is_some()) {
                return Err(RouteError::Misdirected);
            }
            return Ok(Target::Portal);
        }
    }
    app_index(router, uri, headers, sni).map(Target::App)
}

/// The index of the app a request is for: by its Host, which must belong to the same app as
/// the TLS name (SNI) the connection was set up with, if any.
pub fn app_index(
    router: &Router,
    uri: &Uri,
    headers: &HeaderMap,
    sni: Option<&str>,
) -> Result<usize, RouteError> {
    let host = request_host(uri, headers)?;
    let idx = router.find(&host).ok_or(RouteError::UnknownHost)?;
    if let Some(sni) = sni
        && router
            .find(&sni.to_ascii_lowercase())
            .is_some_and(|s| s != idx)
    {
        return Err(RouteError::Misdirected);
    }
    Ok(idx)
}

/// Why a request's host could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Neither an authority nor a Host header.
    #[error("missing Host")]
    Missing,
    /// Not a host name, or two different ones.
    #[error("invalid Host")]
    Invalid,
}

/// The host a request names, lower-cased, without port, brackets or trailing dot.
/// HTTP/2's `:authority` (or an absolute-form URI) and the Host header must agree when both
/// are present; a repeated Host header is refused.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Result<Cow<'a, str>, HostError> {
    // A look at the request's few headers costs less than a lookup by hash.
    let mut hosts = headers
        .iter()
        .filter_map(|(name, value)| (name == HOST).then_some(value));
    let header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(normalise(h.to_str().map_err(|_| HostError::Invalid)?)?),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(HostError::Invalid),
    };
    let authority = uri.authority().map(|a| normalise(a.as_str())).transpose()?;
    match (authority, header) {
        (Some(a), Some(h)) if a != h => Err(HostError::Invalid),
        (Some(a), _) => Ok(a),
        (None, Some(h)) => Ok(h),
        (None, None) => Err(HostError::Missing),
    }
}

/// Normalises `Host`-style text: drops the port and a trailing dot, lower-cases, and checks
/// that what is left is a plausible name or IP literal. Borrowed when already canonical.
pub fn normalise(raw: &str) -> Result<Cow<'_, str>, HostError> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        let (inside, after) = rest.split_once(']').ok_or(HostError::Invalid)?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return Err(HostError::Invalid);
        }
        let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| HostError::Invalid)?;
        return Ok(Cow::Owned(ip.to_string()));
    } else {
        // By byte: the char searcher costs a few hundred instructions on a short name.
        match raw
            .bytes()
            .rposition(|b| b == b':')
            .and_then(|i| Some((raw.get(..i)?, raw.get(i + 1..)?)))
        {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return Err(HostError::Invalid),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(HostError::Invalid);
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_hosts() {
        assert_eq!(normalise("Example.COM:8443").unwrap(), "example.com");
        assert_eq!(normalise("localhost").unwrap(), "localhost");
        assert_eq!(normalise("localhost.").unwrap(), "localhost");
        assert_eq!(normalise("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(normalise("[::1]:8443").unwrap(), "::1");
        assert_eq!(normalise("[::1]").unwrap(), "::1");
        for bad in [
            "",
            ":80",
            "a b",
            "a/b",
            "a@b",
            "[::1",
            "[zz]",
            "host:port",
            "a:80:90",
            "[::1]x",
        ] {
            assert!(normalise(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_portal_host_is_the_portals_and_sni_must_agree() {
        let apps = [vec![HostPattern::Exact("a.example".into())]];
        let r = Router::new(apps.iter().map(Vec::as_slice)).with_portal(Some("auth.example"));
        let mut h = HeaderMap::new();
        h.insert(HOST, "Auth.Example:8443".parse().unwrap());
        let uri = Uri::from_static("/");
        assert_eq!(target(&r, &uri, &h, None), Ok(Target::Portal));
        assert_eq!(
            target(&r, &uri, &h, Some("auth.example")),
            Ok(Target::Portal)
        );
        assert_eq!(
            target(&r, &uri, &h, Some("a.example")),
            Err(RouteError::Misdirected)
        );
        h.insert(HOST, "a.example".parse().unwrap());
        assert_eq!(target(&r, &uri, &h, None), Ok(Target::App(0)));
    }

    #[test]
    fn finds_exact_then_wildcard() {
        let apps = [
            vec![HostPattern::Exact("a.corp.example".into())],
            vec![HostPattern::Wildcard("corp.example".into())],
            vec![HostPattern::Wildcard("eu.corp.example".into())],
        ];
        let r = Router::new(apps.iter().map(Vec::as_slice));
        assert_eq!(r.find("a.corp.example"), Some(0));
        assert_eq!(r.find("b.corp.example"), Some(1));
        assert_eq!(r.find("x.y.corp.example"), Some(1));
        assert_eq!(r.find("x.eu.corp.example"), Some(2));
        assert_eq!(r.find("corp.example"), None);
        assert_eq!(r.find("evil.example"), None);
    }

    #[test]
    fn host_header_and_authority_must_agree() {
        let mut h = HeaderMap::new();
        h.insert(HOST, "App.Example:443".parse().unwrap());
        assert_eq!(
            request_host(&Uri::from_static("/x"), &h).unwrap(),
            "app.example"
        );
        assert_eq!(
            request_host(&Uri::from_static("https://app.example/x"), &h).unwrap(),
            "app.example"
        );
        assert_eq!(
            request_host(&Uri::from_static("https://other.example/x"), &h),
            Err(HostError::Invalid)
        );
        h.append(HOST, "b.example".parse().unwrap());
        assert_eq!(
            request_host(&Uri::from_static("/x"), &h),
            Err(HostError::Invalid)
        );
        assert_eq!(
            request_host(&Uri::from_static("/x"), &HeaderMap::new()),
            Err(HostError::Missing)
        );
    }
}
