//! The gateway's own HTML: error pages, with the security headers every gateway page carries
//! (SPEC.md §4): a strict CSP that allows only our one stylesheet by hash, no caching, no
//! framing, no referrer.

use std::sync::OnceLock;

use base64::Engine as _;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;

/// The stylesheet of every gateway page, inlined and allowed by its hash.
pub const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2330;--muted:#5b6475;--bg:#f5f6f8;--card:#fff;--line:#d9dde5;--accent:#2456d3}\
@media (prefers-color-scheme:dark){:root{--fg:#e8eaef;--muted:#a3aab8;--bg:#14171d;--card:#1d2129;--line:#353b47;--accent:#7ea2ff}}\
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
main{max-width:28rem;margin:10vh auto;padding:2rem;background:var(--card);border:1px solid var(--line);border-radius:12px}\
h1{font-size:1.35rem;margin:0 0 .75rem}p{margin:.5rem 0;color:var(--muted)}code{font-size:.9em}\
label{display:block;font-weight:600;margin:1rem 0 .35rem}\
input{width:100%;padding:.6rem .7rem;font:inherit;color:var(--fg);background:var(--bg);border:1px solid var(--line);border-radius:8px}\
input:focus{outline:3px solid var(--accent);outline-offset:1px}\
button{margin-top:1rem;width:100%;padding:.65rem;font:inherit;font-weight:600;color:#fff;background:var(--accent);border:0;border-radius:8px;cursor:pointer}\
button:focus{outline:3px solid var(--fg);outline-offset:2px}\
.error{color:#c62828;font-weight:600}@media (prefers-color-scheme:dark){.error{color:#ff8a80}}\
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{text-align:left;padding:.3rem .4rem;border-bottom:1px solid var(--line);vertical-align:top;word-break:break-all}";

fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        );
        HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

/// Adds the headers every gateway page carries.
pub fn security_headers(h: &mut HeaderMap) {
    h.insert(CONTENT_SECURITY_POLICY, csp().clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete HTML document around `body_html` (which must already be escaped).
pub fn document(title: &str, body_html: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{}</title><style>{STYLE}</style></head>\
         <body><main>{body_html}</main></body></html>",
        escape(title)
    )
}

/// An HTML response with the gateway's security headers.
pub fn html(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(document(title, body_html)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    security_headers(r.headers_mut());
    r
}

/// A JSON response with the gateway's security headers.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    security_headers(r.headers_mut());
    r
}

/// A titled error page with one explanatory sentence.
pub fn error(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    html(
        status,
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn pages_carry_security_headers_and_the_style_hash() {
        let r = error(StatusCode::NOT_FOUND, "Not found", "<script>");
        let h = r.headers();
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("style-src 'sha256-") && csp.starts_with("default-src 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"));
    }
}
