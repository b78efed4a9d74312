//! `builtin:echo`: an upstream inside the gateway that shows the request it received, after
//! header hygiene, so a newcomer sees the identity headers an app gets. HTML for browsers,
//! JSON for everything else.

use std::collections::BTreeMap;

use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::ProxyError;
use super::client::UpstreamBody;
use crate::body::Body;
use crate::config::IdentityHeaders;
use crate::pages::{escape, fallback_html};

/// Answers a request the way an upstream would; `names` are the app's identity headers.
pub async fn respond(
    app: &str,
    names: &IdentityHeaders,
    parts: &http::request::Parts,
    mut body: UpstreamBody,
) -> Result<Response<Body>, ProxyError> {
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ProxyError::TooLarge
            } else {
                ProxyError::Upstream(e)
            }
        })?;
        if let Some(d) = frame.data_ref() {
            body_bytes += d.len() as u64;
        }
    }
    let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str())
            .or_default()
            .push(v.to_str().unwrap_or("<binary>"));
    }
    let identity: BTreeMap<&str, &str> = [
        (&names.email, "email"),
        (&names.user, "user"),
        (&names.groups, "groups"),
    ]
    .into_iter()
    .filter_map(|(h, k)| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(|v| (k, v))
    })
    .collect();
    let wants_html = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        return Ok(html(app, names, parts, &headers, &identity));
    }
    let doc = serde_json::json!({
        "app": app,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "identity": identity,
        "body_bytes": body_bytes,
    });
    let mut r = Response::new(Body::full(doc.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

/// The echo page's stylesheet, admitted by its hash (the page allows no other style or script).
const STYLE: &str = "body{margin:0;font:15px/1.5 system-ui,sans-serif;color:#1d2330;background:#f5f6f8}\
main{max-width:56rem;margin:4vh auto;padding:1.5rem 2rem;background:#fff;border:1px solid #d9dde5;border-radius:12px}\
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.5rem}code{font-size:.9em}\
table{border-collapse:collapse;width:100%;font-size:.85rem}th,td{text-align:left;vertical-align:top;padding:.3rem .5rem;\
border-bottom:1px solid #e3e6ec;word-break:break-all}th{white-space:nowrap;width:14rem}tr.id th,tr.id td{background:#eef3ff}\
a{color:#2456d3}";

fn csp() -> &'static http::HeaderValue {
    static CSP: std::sync::OnceLock<http::HeaderValue> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        let digest = ring::digest::digest(&ring::digest::SHA256, STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        http::HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'sha256-{hash}'; frame-ancestors 'none'"
        ))
        .unwrap_or_else(|_| http::HeaderValue::from_static("default-src 'none'"))
    })
}

fn html(
    app: &str,
    names: &IdentityHeaders,
    parts: &http::request::Parts,
    headers: &BTreeMap<&str, Vec<&str>>,
    identity: &BTreeMap<&str, &str>,
) -> Response<Body> {
    let who = match (identity.get("email"), identity.get("user")) {
        (Some(e), _) => format!(
            "<p>Signed in as <strong>{}</strong>. <a href=\"/.otpgate/logout\">Sign out</a></p>",
            escape(e)
        ),
        (None, Some(u)) => format!("<p>Let in as <strong>{}</strong>.</p>", escape(u)),
        (None, None) => {
            "<p>No identity headers: this request was let through without a login.</p>".to_owned()
        }
    };
    let mut rows = String::new();
    for (k, vs) in headers {
        let class = if [&names.email, &names.user, &names.groups]
            .into_iter()
            .any(|n| n == k)
        {
            " class=\"id\""
        } else {
            ""
        };
        for v in vs {
            rows.push_str(&format!(
                "<tr{class}><th>{}</th><td>{}</td></tr>",
                escape(k),
                escape(v)
            ));
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{app} (echo)</title>\
         <style>{STYLE}</style></head><body><main><h1>{app} is behind otpgate</h1>{who}\
         <p>This is <code>builtin:echo</code>: it shows the request it received, as an upstream app would see it.</p>\
         <p><code>{method} {target}</code></p><h2>Headers the app received</h2><table>{rows}</table></main></body></html>",
        app = escape(app),
        method = escape(parts.method.as_str()),
        target = escape(&target),
    );
    let mut r = fallback_html(StatusCode::OK, "", "");
    *r.body_mut() = Body::full(doc);
    r.headers_mut()
        .insert(http::header::CONTENT_SECURITY_POLICY, csp().clone());
    r
}
