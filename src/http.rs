//! Small HTTP helpers shared by the listener, the pipeline stages and the login pages:
//! redirects, telling API calls from page navigations, token lists. A leaf: it knows nothing of
//! apps, sessions or config.

use http::header::{ACCEPT, HeaderValue, LOCATION};
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;

/// A redirect to an already validated absolute URL.
pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    crate::pages::static_headers(r.headers_mut());
    r
}

/// Whether a comma-separated header value (`Connection`, `Upgrade`, ...) lists `token`, ASCII
/// case-insensitive, spaces and tabs around it ignored (RFC 9110 s5.6.1).
pub(crate) fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a request is an API call rather than a page navigation (docs/product.md#s4): API
/// calls get JSON errors instead of a login page they could not show.
pub(crate) fn wants_json(h: &HeaderMap) -> bool {
    let accept = h.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let fetch_mode = h.get("sec-fetch-mode").and_then(|v| v.to_str().ok());
    let xhr = h
        .get("x-requested-with")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"));
    (accept.contains("application/json") && !accept.contains("text/html"))
        || xhr
        || fetch_mode.is_some_and(|m| m != "navigate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_are_read_by_token_not_by_substring() {
        assert!(lists_token(b"keep-alive, Close", b"close"));
        assert!(lists_token(b"Upgrade", b"upgrade"));
        assert!(lists_token(b" upgrade\t,x", b"upgrade"));
        assert!(!lists_token(b"closed", b"close"));
        assert!(!lists_token(b"not-close", b"close"));
        assert!(!lists_token(b"", b"close"));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn navigations_want_pages_and_api_calls_want_json() {
        assert!(!wants_json(&headers(&[("accept", "text/html,*/*")])));
        assert!(!wants_json(&headers(&[("sec-fetch-mode", "navigate")])));
        assert!(wants_json(&headers(&[("accept", "application/json")])));
        assert!(wants_json(&headers(&[(
            "x-requested-with",
            "xmlhttprequest"
        )])));
        assert!(wants_json(&headers(&[("sec-fetch-mode", "cors")])));
        assert!(!wants_json(&headers(&[(
            "accept",
            "application/json, text/html"
        )])));
    }

    #[test]
    fn redirects_carry_the_location_and_no_store() {
        let r = redirect(StatusCode::FOUND, "https://app.example/x");
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[LOCATION], "https://app.example/x");
    }
}
