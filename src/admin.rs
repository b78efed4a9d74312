//! The admin listener: `/healthz` (the process answers), `/readyz` (it should get traffic),
//! `/metrics` (Prometheus text), and the admin API, which needs `Authorization: Bearer` with
//! the token of `admin.token_file` (without one configured it answers 403):
//!
//! ```text
//! POST /admin/send-auth-email   {"users": [..], "groups": [..], "app": "..", "method": "link"|"token",
//!                                "force": false}  →  {"results": [{"user": "..", "outcome": "sent"}]}
//! ```
//!
//! Meant for a private network; it serves no app traffic.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use std::sync::Arc;

use crate::body::Body;
use crate::gateway::{Gateway, Runtime};
use crate::login::send::{Issuer, Job, Operator, Outcome};
use crate::policy::LoginMethod;

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

fn problem(status: StatusCode, error: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": error }))
}

/// Largest admin API request body.
const MAX_BODY: usize = 64 * 1024;

/// `None` when the request carries the admin token (compared in constant time), else the
/// refusal.
fn refused(gw: &Gateway, req: &Request<Incoming>) -> Option<Response<Body>> {
    let rt = gw.runtime();
    let Some(token) = rt.config.admin.token.as_ref() else {
        return Some(problem(StatusCode::FORBIDDEN, "admin_api_disabled"));
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let want = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
    let got = ring::digest::digest(&ring::digest::SHA256, given.trim().as_bytes());
    // Digests first, so the comparison does not depend on the lengths either.
    if bool::from(subtle::ConstantTimeEq::ct_eq(want.as_ref(), got.as_ref())) {
        None
    } else {
        let mut r = problem(StatusCode::UNAUTHORIZED, "unauthorised");
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    app: Option<String>,
    method: Option<String>,
    #[serde(default)]
    force: bool,
}

/// `POST /admin/send-auth-email`: the command line's `send-auth-email`, on a running gateway.
async fn send_auth_email(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    if let Some(r) = refused(gw, &req) {
        return r;
    }
    let (ask, method) = match read_send_request(req).await {
        Ok(checked) => checked,
        Err(r) => return r,
    };
    let rt = Arc::clone(&*gw.runtime());
    let (app, method) = match crate::login::send::target(&rt.config, ask.app.as_deref(), method) {
        Ok(t) => t,
        Err(e) => return bad_request(&e),
    };
    let Some(origin) = rt
        .apps
        .iter()
        .find(|a| a.config.name == app.name)
        .map(|a| a.origin.clone())
    else {
        return problem(StatusCode::BAD_REQUEST, "unknown app");
    };
    let job = Job {
        app: &app.name,
        origin: &origin,
        method,
        force: ask.force,
        users: &ask.users,
        groups: &ask.groups,
    };
    let lines = send(gw, &rt, &job).await;
    let results: Vec<serde_json::Value> = lines
        .iter()
        .map(|(user, o)| serde_json::json!({ "user": user, "outcome": o.as_str() }))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({ "app": app.name, "method": method.as_str(), "results": results }),
    )
}

/// The request body, and its method; the answer when either is unusable or nobody is named.
async fn read_send_request(
    req: Request<Incoming>,
) -> Result<(SendRequest, Option<LoginMethod>), Response<Body>> {
    use http_body_util::BodyExt as _;
    let Ok(body) = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
    else {
        return Err(problem(StatusCode::BAD_REQUEST, "unreadable_body"));
    };
    let ask: SendRequest = serde_json::from_slice(&body).map_err(|e| bad_request(&e))?;
    let method = match ask.method.as_deref() {
        None => None,
        Some("link" | "onetimelink") => Some(LoginMethod::OneTimeLink),
        Some("token" | "onetimetoken") => Some(LoginMethod::OneTimeToken),
        Some(_) => return Err(problem(StatusCode::BAD_REQUEST, "method is link or token")),
    };
    if ask.users.is_empty() && ask.groups.is_empty() {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "name at least one user or group",
        ));
    }
    Ok((ask, method))
}

fn bad_request(detail: &dyn std::fmt::Display) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": "bad_request", "detail": detail.to_string() }),
    )
}

/// Mails the job with the gateway's own keys, store and mailer, so the links and passwords
/// are the ones it will accept.
async fn send(gw: &Gateway, rt: &Runtime, job: &Job<'_>) -> Vec<(String, Outcome)> {
    let keys = Arc::clone(&*gw.sessions().keys());
    let users = Arc::clone(&*gw.users());
    let operator = Operator {
        issuer: Issuer {
            pages: &rt.pages,
            keys: &keys,
            store: gw.store(),
            random: gw.random().as_ref(),
            providers: &rt.config.identity_providers,
        },
        users: &users,
        mailer: gw.mailer(),
        audit: &rt.audit,
        clock: gw.clock().as_ref(),
        via: "admin api",
    };
    operator.send(job).await
}

/// `/readyz`: started, not stopping, and the shared state and the credentials store answer (a
/// replica whose Redis or PostgreSQL is unreachable cannot log anyone in, so the load balancer
/// should prefer another).
async fn readyz(gw: &Gateway) -> Response<Body> {
    let plain = "text/plain; charset=utf-8";
    if !gw.is_ready() {
        return text(StatusCode::SERVICE_UNAVAILABLE, plain, "not ready\n");
    }
    if let Err(e) = gw.state().ready().await {
        return not_ready(&e);
    }
    match gw.store().ping().await {
        Ok(()) => text(StatusCode::OK, plain, "ready\n"),
        Err(e) => not_ready(&e),
    }
}

/// 503 naming the cause and its sources.
fn not_ready(e: &dyn std::error::Error) -> Response<Body> {
    let mut why = String::from("not ready: ");
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        why.push_str(&c.to_string());
        why.push_str(if c.source().is_some() { ": " } else { "\n" });
        cause = c.source();
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        why,
    )
}

/// Answers one admin request.
pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>) -> Response<Body> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if req.uri().path() == "/admin/send-auth-email" {
        return if *req.method() == Method::POST {
            send_auth_email(gw, req).await
        } else {
            problem(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        };
    }
    match (read, req.uri().path()) {
        (true, "/healthz") => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        (true, "/readyz") => readyz(gw).await,
        (true, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(),
        ),
        (false, "/healthz" | "/readyz" | "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}
