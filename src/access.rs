//! The policy stage: "may this request in, and as whom?".
//!
//! The pipeline asks [`authorize`] once per proxied request. It decides without an identity
//! first, and only when the answer depends on who is asking does it open the session and decide
//! again with the identity (docs/security.md#33, docs/security.md#36). A yes is a [`Permitted`]:
//! a value only this module can make, which the proxy stage requires, so no code path can
//! forward a request that the policies did not let in.
//!
//! A request presenting a service token (either of its headers) is decided as that service
//! and only so: a bad, unknown or expired token is refused with 401, never sent to a login page
//! and never decided by a cookie it may also carry.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::assertion::{Assertions, Subject};
use crate::audit::{Audit, Event};
use crate::config::AssertionConfig;
use crate::metrics::{self, AppMetrics, DecisionLabel};
use crate::policy::{self, Decision, Policy};
use crate::session::service_token::ServiceTokens;
use crate::session::{self, Claims, SessionError, Sessions};
use crate::users::{User, Users};

/// Leave to forward a request: what the policy stage decided, with the identity when a session
/// took part. Its fields are private and it has no public constructor.
#[derive(Debug)]
pub struct Permitted {
    bypass: bool,
    session: Option<Session>,
    /// The service a `service_auth` policy let in.
    service: Option<Grant>,
}

/// A service token's leave.
#[derive(Debug)]
struct Grant {
    /// `X-Otpgate-User: service:<name>`.
    user: HeaderValue,
    /// When the token expires (Unix ms): a tunnel it opened ends then.
    expires_ms: Option<u64>,
}

/// The session behind a permitted request.
#[derive(Debug)]
struct Session {
    /// Shared with the cache of opened cookies: no copy per request.
    claims: Arc<Claims>,
    identity: Identity,
    refreshed: Option<HeaderValue>,
}

/// The values of the identity headers of an allowed request (docs/product.md#s4). The names
/// they go under are the app's (`apps[].identity_headers`, `X-Otpgate-*` by default), set by
/// the proxy stage after it stripped every client-sent one (docs/security.md#40).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The normalised address (`X-Otpgate-Email` by default).
    pub email: HeaderValue,
    /// The user id, or the address when the user is not in the user table (`X-Otpgate-User`
    /// by default).
    pub user: HeaderValue,
    /// Comma-separated group names (`X-Otpgate-Groups` by default).
    pub groups: HeaderValue,
    /// The signed identity assertion and the header it goes in, when it is switched on
    /// (docs/security.md#34).
    pub assertion: Option<(HeaderName, HeaderValue)>,
}

impl Permitted {
    /// Whether a bypass policy let the request in (no session was looked at).
    pub fn is_bypass(&self) -> bool {
        self.bypass
    }

    /// The identity headers, when a session allowed the request.
    pub fn identity(&self) -> Option<&Identity> {
        self.session.as_ref().map(|s| &s.identity)
    }

    /// `X-Otpgate-User: service:<name>`, when a service token allowed the request.
    pub fn service_user(&self) -> Option<&HeaderValue> {
        self.service.as_ref().map(|g| &g.user)
    }

    /// When the leave ends (Unix ms): the session's expiry, or the service token's; `None`
    /// for a bypass or a token without an expiry. A tunnel opened with it ends then.
    pub fn ends_ms(&self) -> Option<u64> {
        match (&self.session, &self.service) {
            (Some(s), _) => Some(s.claims.expires_ms()),
            (None, Some(g)) => g.expires_ms,
            (None, None) => None,
        }
    }

    /// The session, when one allowed the request.
    pub fn claims(&self) -> Option<&Claims> {
        self.session.as_ref().map(|s| &*s.claims)
    }

    /// The refreshed session cookie to send back with the response, if one is due.
    pub fn take_refreshed(&mut self) -> Option<HeaderValue> {
        self.session.as_mut().and_then(|s| s.refreshed.take())
    }
}

/// Why the policy stage said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No usable session; `clear_cookie` when a cookie was sent that did not open (it is
    /// deleted so the browser stops sending it).
    LoginRequired {
        /// Delete the cookie that was sent.
        clear_cookie: bool,
    },
    /// A block policy matched, or none did.
    Forbidden,
    /// A service token was presented and is malformed, unknown, wrong or expired.
    InvalidServiceToken,
}

/// What the policy stage needs to know about the app.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppAccess<'a> {
    /// The app's name (the session audience).
    pub name: &'a str,
    /// Its policies, in order.
    pub policies: &'a [Policy],
    /// The name of its session cookie.
    pub cookie_name: &'static str,
    /// Whether it is served over https (for the refreshed cookie's `Secure`).
    pub https: bool,
    /// Its public origin (the assertion's `iss`).
    pub issuer: &'a str,
    /// Its assertion audience (`aud`).
    pub audience: &'a str,
    /// Its metric handles.
    pub metrics: &'a AppMetrics,
}

/// The long-lived parts the policy stage reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deps<'a> {
    /// Cookie keys and revocations.
    pub sessions: &'a Sessions,
    /// The user table (groups).
    pub users: &'a Users,
    /// Now, Unix milliseconds.
    pub now_ms: u64,
    /// The idle timeout of sessions.
    pub idle: Duration,
    /// The assertion signer and its settings, when assertions are switched on.
    pub assertion: Option<(&'a Assertions, &'a AssertionConfig)>,
    /// The service tokens of the config serving now.
    pub service_tokens: &'a ServiceTokens,
    /// Where token use and refusals are recorded.
    pub audit: &'a Audit,
}

/// Decides whether the request described by `facts` (with these `headers`) may reach `app`.
pub(crate) fn authorize(
    deps: Deps<'_>,
    app: AppAccess<'_>,
    facts: &policy::Request<'_>,
    headers: &HeaderMap,
) -> Result<Permitted, Refusal> {
    if deps.service_tokens.presented(headers) {
        return authorize_service(deps, app, facts, headers);
    }
    let (decision, session) = match policy::decide(app.policies, facts, None) {
        Decision::LoginRequired(_) | Decision::Allow(_) => {
            match deps.sessions.from_headers_shared(
                headers,
                app.cookie_name,
                app.name,
                deps.now_ms,
                Some(deps.idle),
            ) {
                Err(e) => {
                    app.metrics.decision(DecisionLabel::LoginRequired);
                    if e != SessionError::Missing {
                        app.metrics.session_rejected(e.label());
                    }
                    return Err(Refusal::LoginRequired {
                        clear_cookie: e != SessionError::Missing,
                    });
                }
                Ok(session::Accepted {
                    claims,
                    email_header,
                }) => {
                    let user = deps.users.by_email(claims.email.as_str());
                    let groups = user.map_or(&[][..], |u| &u.groups[..]);
                    let who = policy::Identity {
                        email: &claims.email,
                        groups,
                        login_method: claims.method,
                    };
                    let d = policy::decide(app.policies, facts, Some(&who));
                    let session = d.permits().then(|| Session {
                        identity: identity_headers(deps, app, &claims, email_header, user),
                        refreshed: refresh_cookie(deps, app, &claims),
                        claims,
                    });
                    (d, session)
                }
            }
        }
        d => (d, None),
    };
    app.metrics.decision(label(&decision));
    if decision.permits() {
        Ok(Permitted {
            bypass: matches!(decision, Decision::Bypass(_)),
            session,
            service: None,
        })
    } else {
        Err(Refusal::Forbidden)
    }
}

/// The decision for a request presenting a service token (docs/security.md#29, #33).
fn authorize_service(
    deps: Deps<'_>,
    app: AppAccess<'_>,
    facts: &policy::Request<'_>,
    headers: &HeaderMap,
) -> Result<Permitted, Refusal> {
    let now = Duration::from_millis(deps.now_ms);
    let service = match deps.service_tokens.check(headers, deps.now_ms) {
        Ok(s) => s,
        Err(refused) => {
            let reason = refused.failure.label();
            ::metrics::counter!(metrics::SERVICE_TOKEN_FAILURES, "app" => app.name.to_owned(), "reason" => reason)
                .increment(1);
            if refused.audit_due(deps.now_ms) {
                let mut e = Event::new("service_token.refused")
                    .app(app.name)
                    .ip(facts.ip)
                    .with("reason", reason);
                if let Some(name) = refused.name() {
                    e = e.with("token", name);
                }
                deps.audit.record(now, e);
            }
            return Err(Refusal::InvalidServiceToken);
        }
    };
    let decision = policy::decide_service(app.policies, facts, service.name());
    app.metrics.decision(label(&decision));
    if !decision.permits() {
        return Err(Refusal::Forbidden);
    }
    if service.audit_due(deps.now_ms) {
        deps.audit.record(
            now,
            Event::new("service_token.used")
                .app(app.name)
                .ip(facts.ip)
                .with("token", service.name())
                .with("client_id", service.client_id())
                .with("policy", decision.policy().map_or("", |p| p.name.as_str())),
        );
    }
    let bypass = matches!(decision, Decision::Bypass(_));
    Ok(Permitted {
        bypass,
        session: None,
        service: (!bypass).then(|| Grant {
            user: service.user_header().clone(),
            expires_ms: service.expires_ms(),
        }),
    })
}

fn label(d: &Decision<'_>) -> DecisionLabel {
    match d {
        Decision::Bypass(_) => DecisionLabel::Bypass,
        Decision::Allow(_) => DecisionLabel::Allow,
        Decision::ServiceAuth(_) => DecisionLabel::ServiceAuth,
        Decision::Block(_) => DecisionLabel::Block,
        Decision::LoginRequired(_) => DecisionLabel::LoginRequired,
        Decision::NoMatch => DecisionLabel::NoMatch,
    }
}

/// A fresh cookie with a new activity time, when the last refresh is old enough: at most once
/// a minute per session, so an active session costs one sealing a minute, not one a request.
fn refresh_cookie(deps: Deps<'_>, app: AppAccess<'_>, claims: &Claims) -> Option<HeaderValue> {
    let idle_ms = u64::try_from(deps.idle.as_millis()).ok()?;
    let refresh_after = (idle_ms / 10).clamp(1_000, 60_000);
    if deps.now_ms.saturating_sub(claims.refreshed_ms) < refresh_after {
        return None;
    }
    let value = deps.sessions.refresh(claims, deps.now_ms).ok()?;
    let left = Duration::from_millis(claims.expires_ms.saturating_sub(deps.now_ms));
    session::set_cookie(app.cookie_name, &value, left, app.https)
}

/// The identity headers for an allowed request: values prepared once per opened cookie
/// (`email`) and per user table (the id and groups), cloned, not made again.
fn identity_headers(
    deps: Deps<'_>,
    app: AppAccess<'_>,
    claims: &Claims,
    email: HeaderValue,
    user: Option<&Arc<User>>,
) -> Identity {
    let user_id = user
        .and_then(|u| u.id_header.clone())
        .unwrap_or_else(|| email.clone());
    let groups = user.map_or_else(|| HeaderValue::from_static(""), |u| u.groups_header.clone());
    let assertion = deps.assertion.and_then(|(signer, config)| {
        let subject = Subject {
            session: claims.id(),
            session_expires_ms: claims.expires_ms(),
            issuer: app.issuer,
            audience: app.audience,
            user: user.map_or(claims.email.as_str(), |u| u.id.as_str()),
            email: claims.email.as_str(),
            groups: user.map_or(&[][..], |u| &u.groups[..]),
            method: claims.method,
        };
        // Without a token the request still goes, without the header: an upstream that relies
        // on the assertion refuses it, which fails closed (signing fails only without keys).
        let token = signer.token(&subject, config.lifetime, deps.now_ms).ok()?;
        Some((config.header.clone(), token))
    });
    Identity {
        email,
        user: user_id,
        groups,
        assertion,
    }
}
