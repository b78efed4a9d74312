//! The gateway's own pages under `/.otpgate/` on every app host (SPEC.md §4): the one-time PIN,
//! the one-time link, temporary passwords and password logins, and logout.
//!
//! ```text
//! GET  /.otpgate/login     the forms of the app's methods (a new login transaction cookie, CSRF)
//! POST /.otpgate/login     method=pin "Send me a code", =link "Email me a sign-in link",
//!                          =token "Email me a temporary password": always the same answer, mail
//!                          only to allowed people; =password: a password login
//! POST /.otpgate/code      the code: session cookie and 303 to the validated return target
//! GET  /.otpgate/link?t=   a one-time link's confirmation page (never uses the link)
//! POST /.otpgate/link      the button on it: session cookie and 303 to the link's target
//! GET  /.otpgate/password  "Choose a new password" (restricted session of a temporary password)
//! POST /.otpgate/password  stores it; session cookie, other sessions end, notice by mail
//! GET  /.otpgate/logout    "Sign out" button
//! POST /.otpgate/logout    ends the session on the server and clears the cookie
//! ```
//!
//! Anti-enumeration (SECURITY.md 10): every well-formed address gets the same status, headers
//! and page, after the same work (a PIN and its digest are made and stored for every request;
//! for addresses that get no mail the stored record can never succeed) and no sooner than a
//! fixed floor; mail leaves through a queue, never inline.

mod error;
mod link;
mod password;
pub mod pin;
pub mod secret;
pub mod send;
pub mod tx;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use std::sync::Arc;

use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use minijinja::context;

pub use error::LoginError;

use crate::audit::{Audit, Event};
use crate::body::{Body, RequestBody};
use crate::clock::Clock;
use crate::config::{AppConfig, Config, Origin};
use crate::email::Email;
use crate::http::redirect;
use crate::mailer::{Mailer, OutgoingMail};
use crate::metrics::{CODES, LOGINS, RATE_LIMITED};
use crate::pages::Pages;
use crate::policy::{self, LoginMethod};
use crate::random::Random;
use crate::return_to;
use crate::session::{self, Kind, SessionError, Sessions};
use crate::state::{CodeRecord, Consume, State};
use crate::store::{Credentials, Failures, RevocationKind};
use crate::users::Users;
use tx::LoginTx;

/// The login page (stable path).
pub const LOGIN_PATH: &str = "/.otpgate/login";
/// Where codes are posted.
pub const CODE_PATH: &str = "/.otpgate/code";
/// The logout page (stable path).
pub const LOGOUT_PATH: &str = "/.otpgate/logout";
/// The one-time link landing page (stable path: links sit in inboxes for a day).
pub const LINK_PATH: &str = "/.otpgate/link";
/// The "choose a new password" page of a temporary-password login.
pub const PASSWORD_PATH: &str = "/.otpgate/password";

/// The answer to "send me a code" is never faster than this, so the time it takes says nothing
/// about the address (the work behind it takes microseconds either way).
const RESPONSE_FLOOR: Duration = Duration::from_millis(10);
/// Largest form accepted.
const MAX_FORM: usize = 16 * 1024;
/// Failed logins after which answers are slowed down, doubling each time.
const DELAY_AFTER: u32 = 3;
/// The longest such delay.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// The message for every failed code (SECURITY.md 11).
pub const NO_ACCESS: &str = "That account does not have access.";
/// The message for a malformed address.
pub const INVALID_EMAIL: &str = "Enter a valid email address.";
const EXPIRED_FORM: &str = "Your sign-in form expired. Please try again.";

/// Why no code was mailed. Operators see it in the audit log and metrics; visitors never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suppressed {
    PolicyBlock,
    UnknownUser,
    RateLimited,
    Locked,
}

impl Suppressed {
    fn as_str(self) -> &'static str {
        match self {
            Self::PolicyBlock => "policy_block",
            Self::UnknownUser => "unknown_user",
            Self::RateLimited => "rate_limited",
            Self::Locked => "locked",
        }
    }
}

/// The long-lived parts the login pages use: handed in by the gateway, so this module depends on
/// the services it uses and not on the gateway itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Services<'a> {
    /// Cookie keys and revocations.
    pub(crate) sessions: &'a Sessions,
    /// Codes, login transactions and rate limits.
    pub(crate) state: &'a State,
    /// Passwords, links, failure counts, revocations.
    pub(crate) store: &'a Credentials,
    /// The outgoing-mail queue.
    pub(crate) mailer: &'a Mailer,
    /// Whether mail goes to the development outbox (suppressed codes are then logged at info).
    pub(crate) outbox: bool,
    /// The user table serving now.
    pub(crate) users: &'a Users,
    /// Wall time.
    pub(crate) clock: &'a Arc<dyn Clock>,
    /// Randomness.
    pub(crate) random: &'a Arc<dyn Random>,
}

/// What the login pages know of the app a request is for, from the config serving now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site<'a> {
    /// The whole config (limits, identity providers, session settings).
    pub(crate) config: &'a Arc<Config>,
    /// Page and mail templates.
    pub(crate) pages: &'a Arc<Pages>,
    /// The audit log.
    pub(crate) audit: &'a Audit,
    /// Every app's origin (the allowed return targets).
    pub(crate) origins: &'a [Origin],
    /// The app.
    pub(crate) app: &'a AppConfig,
    /// Its public origin.
    pub(crate) origin: &'a Origin,
    /// Its session cookie's name.
    pub(crate) cookie_name: &'static str,
    /// Its session lifetime.
    pub(crate) session_lifetime: Duration,
}

/// One request for a gateway page.
pub(crate) struct Flow<'a> {
    pub(crate) svc: Services<'a>,
    pub(crate) site: Site<'a>,
    pub(crate) ip: IpAddr,
}

impl std::fmt::Debug for Flow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("app", &self.site.app.name)
            .field("ip", &self.ip)
            .finish()
    }
}

/// Answers a request under `/.otpgate/`.
pub(crate) async fn handle(
    c: Flow<'_>,
    req: Request<RequestBody>,
    path: &str,
) -> Result<Response<Body>, LoginError> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = *req.method() == Method::POST;
    let pin_offered = c.offers(LoginMethod::OneTimePin);
    let link_offered = c.offers(LoginMethod::OneTimeLink);
    let token_offered = c.offers(LoginMethod::OneTimeToken);
    let to_login = || {
        Ok(redirect(
            StatusCode::SEE_OTHER,
            &format!("{}{LOGIN_PATH}", c.site.origin),
        ))
    };
    match path {
        LOGIN_PATH if read => c.login_page(req.uri().query(), req.headers()),
        LOGIN_PATH if post => c.login_post(req).await,
        CODE_PATH if post && pin_offered => c.verify_code(req).await,
        LINK_PATH if read && link_offered => c.link_page(req.uri().query()).await,
        LINK_PATH if post && link_offered => c.link_login(req).await,
        PASSWORD_PATH if read && token_offered => Ok(c.password_page(req.headers())),
        PASSWORD_PATH if post && token_offered => c.choose_password(req).await,
        CODE_PATH | LINK_PATH | PASSWORD_PATH if read => to_login(),
        LOGOUT_PATH if read => Ok(c.logout_page(req.headers())),
        LOGOUT_PATH if post => c.logout(req).await,
        LOGIN_PATH | CODE_PATH | LOGOUT_PATH | LINK_PATH | PASSWORD_PATH => {
            Err(LoginError::MethodNotAllowed)
        }
        _ => Err(LoginError::NotFound),
    }
}

/// What a login-page form asks for (`method` field; the first offered when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Code,
    Link,
    TempPassword,
    PasswordLogin,
}

/// What the email page shows besides its forms.
#[derive(Debug, Default)]
struct View<'a> {
    email: &'a str,
    error: Option<&'a str>,
    pw_email: &'a str,
    pw_error: Option<&'a str>,
}

impl Flow<'_> {
    fn name(&self) -> &str {
        &self.site.app.name
    }

    fn origin(&self) -> String {
        self.site.origin.to_string()
    }

    fn now_ms(&self) -> u64 {
        self.svc.clock.now_ms()
    }

    fn audit(&self, e: Event<'_>) {
        self.site
            .audit
            .record(self.svc.clock.now(), e.app(self.name()).ip(self.ip));
    }

    fn tx_cookie(&self) -> &'static str {
        tx::cookie_name(self.site.origin.https)
    }

    /// The user who logs in as `email`, if the user table has one.
    fn user(&self, email: &Email) -> Option<Arc<crate::users::User>> {
        self.svc.users.by_email(email.as_str()).cloned()
    }

    fn offers(&self, m: LoginMethod) -> bool {
        self.site.app.login_methods.contains(&m)
    }

    /// `POST /.otpgate/login`: one of the login page's forms.
    async fn login_post(&self, req: Request<RequestBody>) -> Result<Response<Body>, LoginError> {
        let started = tokio::time::Instant::now();
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let Some(tx) = self.checked_tx(&parts.headers, &form) else {
            return self.expired_form();
        };
        let first = [
            (LoginMethod::OneTimePin, Ask::Code),
            (LoginMethod::OneTimeLink, Ask::Link),
            (LoginMethod::OneTimeToken, Ask::TempPassword),
        ]
        .into_iter()
        .find(|(m, _)| self.offers(*m))
        .map(|(_, a)| a);
        let ask = match form.get("method").map(String::as_str) {
            None | Some("") => first,
            Some("pin") => self.offers(LoginMethod::OneTimePin).then_some(Ask::Code),
            Some("link") => self.offers(LoginMethod::OneTimeLink).then_some(Ask::Link),
            Some("token") => self
                .offers(LoginMethod::OneTimeToken)
                .then_some(Ask::TempPassword),
            Some("password") => self
                .offers(LoginMethod::OneTimeToken)
                .then_some(Ask::PasswordLogin),
            Some(_) => None,
        };
        let Some(ask) = ask else {
            return Err(LoginError::BadForm);
        };
        let typed = form.get("email").map_or("", String::as_str);
        let Ok(email) = Email::parse(typed) else {
            // Decided from the syntax alone, before any lookup, limit or mail (SECURITY.md 6).
            let view = if ask == Ask::PasswordLogin {
                View {
                    pw_email: typed,
                    pw_error: Some(INVALID_EMAIL),
                    ..View::default()
                }
            } else {
                View {
                    email: typed,
                    error: Some(INVALID_EMAIL),
                    ..View::default()
                }
            };
            return Ok(self.email_page(&tx, &view, StatusCode::BAD_REQUEST, false));
        };
        match ask {
            Ask::Code => self.request_code(&tx, &email, started).await,
            Ask::Link => {
                self.request_mail(&tx, &email, LoginMethod::OneTimeLink, started)
                    .await
            }
            Ask::TempPassword => {
                self.request_mail(&tx, &email, LoginMethod::OneTimeToken, started)
                    .await
            }
            Ask::PasswordLogin => {
                let typed = form.get("password").map_or("", String::as_str);
                self.password_login(&tx, &email, typed).await
            }
        }
    }

    /// `GET /.otpgate/login`: the email form with a new transaction, or, for visitors who are
    /// signed in already, straight on to the validated target.
    fn login_page(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, LoginError> {
        let target = return_to::rd_param(query)
            .and_then(|rd| return_to::validate(&rd, self.site.origin, self.site.origins));
        let idle = Some(self.site.config.session.idle_timeout);
        if self
            .svc
            .sessions
            .from_headers(
                headers,
                self.site.cookie_name,
                self.name(),
                self.now_ms(),
                idle,
            )
            .is_ok()
        {
            let to = target.map_or_else(|| return_to::root(self.site.origin), String::from);
            return Ok(redirect(StatusCode::FOUND, &to));
        }
        let rd = target.map_or_else(|| return_to::root(self.site.origin), String::from);
        let tx = LoginTx::new(self.svc.random.as_ref(), self.now_ms(), rd)?;
        Ok(self.email_page(&tx, &View::default(), StatusCode::OK, true))
    }

    fn email_page(
        &self,
        tx: &LoginTx,
        view: &View<'_>,
        status: StatusCode,
        set_cookie: bool,
    ) -> Response<Body> {
        let keys = self.svc.sessions.keys();
        let csrf = tx::csrf_token(&keys, "login", self.name(), &tx.id);
        let mut r = self.site.pages.page(
            status,
            "login.html",
            context! {
                app => self.name(), csrf, email => view.email, error => view.error,
                pw_email => view.pw_email, pw_error => view.pw_error,
                offer_pin => self.offers(LoginMethod::OneTimePin),
                offer_link => self.offers(LoginMethod::OneTimeLink),
                offer_token => self.offers(LoginMethod::OneTimeToken),
            },
        );
        if set_cookie {
            match tx.seal(self.name(), &keys, self.svc.random.as_ref()) {
                Ok(v) => {
                    if let Some(h) = session::set_cookie(
                        self.tx_cookie(),
                        &v,
                        tx::LIFETIME,
                        self.site.origin.https,
                    ) {
                        r.headers_mut().append(SET_COOKIE, h);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot seal a login transaction"),
            }
        }
        r
    }

    fn code_page(&self, tx: &LoginTx, email: &str, error: Option<&str>) -> Response<Body> {
        let keys = self.svc.sessions.keys();
        let csrf = tx::csrf_token(&keys, "login", self.name(), &tx.id);
        let (minutes, length) = self
            .site
            .config
            .identity_providers
            .pin
            .as_ref()
            .map_or((10, 6), |p| (p.ttl.as_secs().div_ceil(60), p.length));
        self.site.pages.page(
            StatusCode::OK,
            "code.html",
            context! { app => self.name(), csrf, email, error, minutes, length, rd => tx.rd.as_str() },
        )
    }

    /// The transaction of a form post, if its cookie, CSRF token and origin all check out.
    fn checked_tx(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> Option<LoginTx> {
        let keys = self.svc.sessions.keys();
        let tx =
            LoginTx::from_headers(headers, self.tx_cookie(), self.name(), &keys, self.now_ms())?;
        let token = form.get("csrf").map_or("", String::as_str);
        (tx::origin_ok(headers, &self.origin())
            && tx::csrf_ok(&keys, "login", self.name(), &tx.id, token))
        .then_some(tx)
    }

    /// A form that failed its CSRF check: start over with a fresh transaction.
    fn expired_form(&self) -> Result<Response<Body>, LoginError> {
        let tx = LoginTx::new(
            self.svc.random.as_ref(),
            self.now_ms(),
            return_to::root(self.site.origin),
        )?;
        let view = View {
            error: Some(EXPIRED_FORM),
            ..View::default()
        };
        Ok(self.email_page(&tx, &view, StatusCode::BAD_REQUEST, true))
    }

    /// Whether the policy would let `email` in on the login's target (before mailing a code,
    /// and again after it was entered: policies may change in between).
    fn would_allow(&self, email: &Email, rd: &str, login_method: LoginMethod) -> bool {
        let path = url::Url::parse(rd)
            .ok()
            .filter(|u| u.host_str() == Some(self.site.origin.host.as_str()))
            .and_then(|u| {
                crate::path::normalise(u.path())
                    .ok()
                    .map(|p| p.into_owned())
            })
            .unwrap_or_else(|| "/".to_owned());
        let user = self.user(email);
        let groups = user.as_ref().map_or(&[][..], |u| &u.groups[..]);
        let who = policy::Identity {
            email,
            groups,
            login_method,
        };
        policy::decide(
            &self.site.app.policies,
            &policy::Request {
                path: &path,
                ip: self.ip,
            },
            Some(&who),
        )
        .permits()
    }

    async fn failures(&self, email: &str) -> Result<Failures, LoginError> {
        let e = email.to_owned();
        Ok(self.svc.store.run(move |s| s.failures(&e)).await?)
    }

    /// "Send me a code".
    async fn request_code(
        &self,
        tx: &LoginTx,
        email: &Email,
        started: tokio::time::Instant,
    ) -> Result<Response<Body>, LoginError> {
        let request_id = crate::random::request_id(self.svc.random.as_ref());
        self.audit(
            Event::new("code.requested")
                .email(email.as_str())
                .request(&request_id)
                .with("login_method", "onetimepin"),
        );
        self.issue_code(tx, email, &request_id).await?;
        tokio::time::sleep_until(started + RESPONSE_FLOOR).await;
        Ok(self.code_page(tx, email.as_str(), None))
    }

    async fn issue_code(
        &self,
        tx: &LoginTx,
        email: &Email,
        request_id: &str,
    ) -> Result<(), LoginError> {
        let Some(idp) = self.site.config.identity_providers.pin.as_ref() else {
            return Err(LoginError::NotFound);
        };
        let limits = &self.site.config.rate_limits;
        let state = self.svc.state;
        // The same accounting for every well-formed address (SECURITY.md 17).
        let per_ip = state
            .hit(&key_ip(self.ip), limits.login_requests_per_ip.per)
            .await?;
        let per_address = state
            .hit(&key_sends(email), limits.code_sends_per_address.per)
            .await?;
        let cool = state
            .put_new(&key_cooldown(email), b"1", limits.code_resend_cooldown)
            .await?;
        let failures = self.failures(email.as_str()).await?;
        let allowed = self.would_allow(email, &tx.rd, LoginMethod::OneTimePin);
        let over_ip = per_ip > u64::from(limits.login_requests_per_ip.count);
        let over_address = per_address > u64::from(limits.code_sends_per_address.count);
        for (over, limit) in [
            (over_ip, "ip"),
            (over_address, "address"),
            (!cool, "cooldown"),
        ] {
            if over {
                ::metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
            }
        }
        let reason = if !allowed {
            Some(if self.user(email).is_some() {
                Suppressed::PolicyBlock
            } else {
                Suppressed::UnknownUser
            })
        } else if over_ip || over_address || !cool {
            Some(Suppressed::RateLimited)
        } else if failures.locked {
            Some(Suppressed::Locked)
        } else {
            None
        };

        // A PIN and its digest for every request, mailed or not.
        let keys = self.svc.sessions.keys();
        let key = keys.current();
        let code = pin::generate(self.svc.random.as_ref(), idp.length)?;
        let payload = pin::Payload {
            email: email.to_string(),
            kid: key.id.clone(),
            decoy: reason.is_some(),
        };
        let record = CodeRecord {
            payload: payload.to_bytes(),
            digest: pin::digest(key, &tx.id, email.as_str(), &code),
            attempts: idp.max_attempts,
        };
        let code_key = key_code(&tx.hex());
        match reason {
            None => {
                state.put_code(&code_key, record, idp.ttl, true).await?;
                // A new code supersedes the address's older ones.
                if let Some(old) = state
                    .swap(&key_index(email), tx.hex().as_bytes(), idp.ttl)
                    .await?
                {
                    let old = String::from_utf8_lossy(&old).into_owned();
                    if old != tx.hex() {
                        state.delete(&key_code(&old)).await?;
                    }
                }
                let queued = self.mail_pin(email, &code, idp.ttl);
                self.audit(
                    Event::new("code.sent")
                        .email(email.as_str())
                        .request(request_id)
                        .with("queued", queued),
                );
                ::metrics::counter!(CODES, "app" => self.name().to_owned(), "outcome" => "sent")
                    .increment(1);
            }
            Some(reason) => {
                // A decoy never replaces a pending real code of this browser.
                state.put_code(&code_key, record, idp.ttl, false).await?;
                self.audit(
                    Event::new("code.suppressed")
                        .email(email.as_str())
                        .request(request_id)
                        .with("reason", reason.as_str()),
                );
                ::metrics::counter!(CODES, "app" => self.name().to_owned(), "outcome" => "suppressed", "reason" => reason.as_str())
                    .increment(1);
                if self.svc.outbox {
                    tracing::info!(app = self.name(), email = %email, reason = reason.as_str(), "no code mailed");
                } else {
                    tracing::debug!(app = self.name(), email = %email, reason = reason.as_str(), "no code mailed");
                }
            }
        }
        Ok(())
    }

    /// Queues the PIN mail; the PIN stands alone on its own line of the text part.
    fn mail_pin(&self, email: &Email, code: &str, ttl: Duration) -> bool {
        let ctx = context! { app => self.name(), code, minutes => ttl.as_secs().div_ceil(60) };
        let rendered = (
            self.site.pages.render("pin_subject.txt", ctx.clone()),
            self.site.pages.render("pin.txt", ctx.clone()),
            self.site.pages.render("pin.html", ctx),
        );
        let (Ok(subject), Ok(text), html) = rendered else {
            tracing::error!(app = self.name(), "cannot render the PIN mail");
            return false;
        };
        self.svc.mailer.enqueue(OutgoingMail {
            to: email.clone(),
            subject: one_line(&subject),
            text,
            html: html.ok(),
            kind: "pin",
            app: self.name().to_owned(),
        })
    }

    /// `POST /.otpgate/code`.
    async fn verify_code(&self, req: Request<RequestBody>) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let Some(tx) = self.checked_tx(&parts.headers, &form) else {
            return self.expired_form();
        };
        let Some(idp) = self.site.config.identity_providers.pin.as_ref() else {
            return Err(LoginError::NotFound);
        };
        let limits = &self.site.config.rate_limits;
        let state = self.svc.state;
        let request_id = crate::random::request_id(self.svc.random.as_ref());
        let code_key = key_code(&tx.hex());
        let typed = form.get("code").map_or("", String::as_str);

        if state
            .hit(&key_ip(self.ip), limits.login_requests_per_ip.per)
            .await?
            > u64::from(limits.login_requests_per_ip.count)
        {
            ::metrics::counter!(RATE_LIMITED, "limit" => "ip").increment(1);
            return Ok(self.failed(&tx, None, "throttled", &request_id));
        }
        let Some(payload) = state
            .peek_code(&code_key)
            .await?
            .and_then(|b| pin::Payload::from_bytes(&b))
        else {
            return Ok(self.failed(&tx, None, "no_code", &request_id));
        };
        let email = payload.email.clone();
        let failures = self.failures(&email).await?;
        if failures.locked {
            return Ok(self.failed(&tx, Some(&email), "locked", &request_id));
        }
        if failures.consecutive >= DELAY_AFTER {
            // Growing delays before the hard cap (SECURITY.md 16).
            let n = (failures.consecutive - DELAY_AFTER).min(10);
            tokio::time::sleep((Duration::from_millis(250) * 2u32.pow(n)).min(MAX_DELAY)).await;
        }
        let keys = self.svc.sessions.keys();
        let digest = match (
            payload.decoy,
            pin::clean(typed, idp.length),
            pin::key_for(&keys, Some(&payload.kid)),
        ) {
            (false, Some(code), Some(key)) => pin::digest(key, &tx.id, &email, &code),
            // Decoys and malformed input use an attempt like a wrong code.
            _ => crate::random::bytes::<32>(self.svc.random.as_ref())?,
        };
        match state.consume_code(&code_key, &digest).await? {
            Consume::Accepted(_) => self.logged_in(&tx, &email, &request_id).await,
            Consume::Rejected { left } => {
                let (e, now, cap) = (
                    email.clone(),
                    self.now_ms(),
                    limits.failed_logins_per_account,
                );
                let after = self
                    .svc
                    .store
                    .run(move |s| s.record_failure(&e, now, cap))
                    .await?;
                if after.locked && !failures.locked {
                    self.audit(
                        Event::new("login.locked")
                            .email(&email)
                            .request(&request_id)
                            .with("failures", after.consecutive),
                    );
                }
                let reason = if left == 0 {
                    "wrong_code_burnt"
                } else {
                    "wrong_code"
                };
                Ok(self.failed(&tx, Some(&email), reason, &request_id))
            }
            Consume::Missing => {
                // Used, expired or burnt meanwhile: still a failed login on this account.
                let (e, now, cap) = (
                    email.clone(),
                    self.now_ms(),
                    limits.failed_logins_per_account,
                );
                self.svc
                    .store
                    .run(move |s| s.record_failure(&e, now, cap))
                    .await?;
                Ok(self.failed(&tx, Some(&email), "no_code", &request_id))
            }
        }
    }

    /// Every failure gets the same page and status (SECURITY.md 11).
    fn failed(
        &self,
        tx: &LoginTx,
        email: Option<&str>,
        reason: &str,
        request_id: &str,
    ) -> Response<Body> {
        let mut e = Event::new("login.failed")
            .request(request_id)
            .with("reason", reason)
            .with("login_method", "onetimepin");
        if let Some(email) = email {
            e = e.email(email);
        }
        self.audit(e);
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => "onetimepin", "outcome" => "failure").increment(1);
        self.code_page(tx, email.unwrap_or(""), Some(NO_ACCESS))
    }

    /// A correct code: a new session (SECURITY.md 32) and a 303 to the re-validated target.
    async fn logged_in(
        &self,
        tx: &LoginTx,
        email: &str,
        request_id: &str,
    ) -> Result<Response<Body>, LoginError> {
        let Ok(email) = Email::parse(email) else {
            return Ok(self.failed(tx, None, "invalid_record", request_id));
        };
        if !self.would_allow(&email, &tx.rd, LoginMethod::OneTimePin) {
            return Ok(self.failed(tx, Some(email.as_str()), "policy", request_id));
        }
        let e = email.to_string();
        self.svc.store.run(move |s| s.reset_failures(&e)).await?;
        self.svc.state.delete(&key_index(&email)).await?;
        self.start_session(&email, LoginMethod::OneTimePin, &tx.rd, request_id)
    }

    /// A successful login of any method: a new session (SECURITY.md 32), the login
    /// transaction and any restricted session cleared, and a 303 to the re-validated target.
    fn start_session(
        &self,
        email: &Email,
        method: LoginMethod,
        rd: &str,
        request_id: &str,
    ) -> Result<Response<Body>, LoginError> {
        let now = self.now_ms();
        let (claims, value) = self.svc.sessions.issue(
            Kind::Session,
            self.name(),
            email.clone(),
            method,
            self.site.session_lifetime,
            now,
        )?;
        let target = return_to::validate(rd, self.site.origin, self.site.origins)
            .map_or_else(|| return_to::root(self.site.origin), String::from);
        let mut r = redirect(StatusCode::SEE_OTHER, &target);
        let https = self.site.origin.https;
        for h in [
            session::set_cookie(
                self.site.cookie_name,
                &value,
                self.site.session_lifetime,
                https,
            ),
            session::clear_cookie(self.tx_cookie(), https),
        ]
        .into_iter()
        .flatten()
        {
            r.headers_mut().append(SET_COOKIE, h);
        }
        self.audit(
            Event::new("login.succeeded")
                .email(email.as_str())
                .request(request_id)
                .with("login_method", method.as_str()),
        );
        self.audit(
            Event::new("session.issued")
                .email(email.as_str())
                .request(request_id)
                .with("session", short_id(&claims.id))
                .with(
                    "expires",
                    crate::audit::rfc3339(Duration::from_millis(claims.expires_ms)),
                ),
        );
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => method.as_str(), "outcome" => "success").increment(1);
        Ok(r)
    }

    /// `GET /.otpgate/logout`.
    fn logout_page(&self, headers: &HeaderMap) -> Response<Body> {
        let idle = Some(self.site.config.session.idle_timeout);
        match self.svc.sessions.from_headers(
            headers,
            self.site.cookie_name,
            self.name(),
            self.now_ms(),
            idle,
        ) {
            Ok(c) => {
                let csrf =
                    tx::csrf_token(&self.svc.sessions.keys(), "logout", self.name(), &c.id.0);
                let email = c.email.to_string();
                self.site.pages.page(
                    StatusCode::OK,
                    "logout.html",
                    context! { app => self.name(), signed_in => true, email, csrf },
                )
            }
            Err(_) => self.site.pages.page(
                StatusCode::OK,
                "logout.html",
                context! { app => self.name(), signed_in => false },
            ),
        }
    }

    /// `POST /.otpgate/logout`: the session ends on the server (a copied cookie stops working,
    /// also after a restart) and the cookie is cleared.
    async fn logout(&self, req: Request<RequestBody>) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let idle = Some(self.site.config.session.idle_timeout);
        let now = self.now_ms();
        match self.svc.sessions.from_headers(
            &parts.headers,
            self.site.cookie_name,
            self.name(),
            now,
            idle,
        ) {
            Ok(c) => {
                let token = form.get("csrf").map_or("", String::as_str);
                let keys = self.svc.sessions.keys();
                if !(tx::origin_ok(&parts.headers, &self.origin())
                    && tx::csrf_ok(&keys, "logout", self.name(), &c.id.0, token))
                {
                    return Ok(self.site.pages.error(
                        StatusCode::FORBIDDEN,
                        "Sign-out not confirmed",
                        "Please use the Sign out button on the sign-out page.",
                    ));
                }
                let (hex, expires) = (c.id.hex(), c.expires_ms);
                self.svc
                    .store
                    .run(move |s| s.revoke(RevocationKind::Session, &hex, 0, expires, now))
                    .await?;
                self.svc
                    .sessions
                    .revocations()
                    .revoke_session(c.id, expires);
                let request_id = crate::random::request_id(self.svc.random.as_ref());
                self.audit(
                    Event::new("logout")
                        .email(c.email.as_str())
                        .request(&request_id)
                        .with("session", short_id(&c.id)),
                );
                self.audit(
                    Event::new("session.revoked")
                        .email(c.email.as_str())
                        .request(&request_id)
                        .with("scope", "one session")
                        .with("session", short_id(&c.id)),
                );
            }
            Err(SessionError::Missing | SessionError::Invalid(_) | SessionError::Revoked) => {}
        }
        let mut r = self.site.pages.page(
            StatusCode::OK,
            "signed_out.html",
            context! { app => self.name() },
        );
        if let Some(h) = session::clear_cookie(self.site.cookie_name, self.site.origin.https) {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }
}

/// The first 4 bytes of a session id, for correlating audit events (not enough to forge one).
fn short_id(id: &session::SessionId) -> String {
    crate::random::hex(&id.0[..4])
}

/// A subject line: the first line, without control characters (SECURITY.md 9).
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

fn key_ip(ip: IpAddr) -> String {
    format!("otpgate:rl:ip:{ip}")
}
fn key_sends(email: &Email) -> String {
    format!("otpgate:rl:send:{email}")
}
fn key_cooldown(email: &Email) -> String {
    format!("otpgate:cool:{email}")
}
fn key_index(email: &Email) -> String {
    format!("otpgate:pinidx:{email}")
}
fn key_code(tx_hex: &str) -> String {
    format!("otpgate:pin:{tx_hex}")
}

/// Reads an `application/x-www-form-urlencoded` body (at most 16 KiB); the first value of each
/// field counts.
async fn read_form(
    headers: &HeaderMap,
    body: RequestBody,
) -> Result<HashMap<String, String>, LoginError> {
    let form_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !form_type {
        return Err(LoginError::BadForm);
    }
    let bytes = Limited::new(body, MAX_FORM)
        .collect()
        .await
        .map_err(LoginError::UnreadableForm)?
        .to_bytes();
    let mut form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&bytes) {
        form.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_lines_cannot_carry_header_breaks() {
        assert_eq!(one_line("Your code\r\nBcc: x@evil.example"), "Your code");
        assert_eq!(one_line("\n  Code for app\u{7}\n"), "Code for app");
    }
}
