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
use crate::pages::{escape, fallback_html};

/// The identity headers the gateway sets, in display order.
const IDENTITY: [(&str, &str); 3] = [
    ("x-otpgate-email", "email"),
    ("x-otpgate-user", "user"),
    ("x-otpgate-groups", "groups"),
];

/// Answers a request the way an upstream would.
pub async fn respond(
    app: &str,
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
    let identity: BTreeMap<&str, &str> = IDENTITY
        .iter()
        .filter_map(|(h, k)| {
            parts
                .headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (*k, v))
        })
        .collect();
    let wants_html = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        return Ok(html(app, parts, &headers, &identity));
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

fn html(
    app: &str,
    parts: &http::request::Parts,
    headers: &BTreeMap<&str, Vec<&str>>,
    identity: &BTreeMap<&str, &str>,
) -> Response<Body> {
    let who = match identity.get("email") {
        Some(e) => format!("<p>Signed in as <strong>{}</strong>.</p>", escape(e)),
        None => {
            "<p>No identity headers: this request was let through without a login.</p>".to_owned()
        }
    };
    let mut rows = String::new();
    for (k, vs) in headers {
        for v in vs {
            rows.push_str(&format!(
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(k),
                escape(v)
            ));
        }
    }
    let body = format!(
        "<h1>{} is behind otpgate</h1>{who}<p><code>{} {}</code></p>\
         <h2>Headers the app received</h2><table>{rows}</table>",
        escape(app),
        escape(parts.method.as_str()),
        escape(
            &parts
                .uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
    );
    fallback_html(StatusCode::OK, &format!("{app} (echo)"), &body)
}
