//! The gateway's own pages under `/.otpgate/` on every app host (docs/product.md#s4): the
//! one-time PIN, the one-time link, temporary passwords and password logins, and logout.
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
//! GET  /.otpgate/certs     the identity assertions' public keys (JWKS), no session needed
//! GET  /.otpgate/callback  a hand-off code from the single sign-on portal (`portal`)
//! ```
//!
//! With a portal configured the login runs there (`portal`): the app's `GET /.otpgate/login`
//! sends the browser to it, and the same flows below serve the app's forms on the portal.
//!
//! One file per flow: `page` (the login page and its form posts), `pin`, `mail_request` (links
//! and temporary passwords asked for on the login page), `link`, `password` (password logins),
//! `choose_password` (the restricted session of a temporary password), `logout`;
//! `session_start` ends every successful login, and `limits` holds the accounting they share,
//! so every method counts requests and failures the same way.
//!
//! Anti-enumeration (docs/security.md#10): every well-formed address gets the same status,
//! headers and page, after the same work (a PIN and its digest are made and stored for every
//! request; for addresses that get no mail the stored record can never succeed) and no sooner
//! than a fixed floor; mail leaves through a queue, never inline.

mod certs;
mod choose_password;
mod device;
mod error;
mod limits;
mod link;
mod logout;
mod mail_request;
mod page;
mod password;
pub(crate) mod pin;
pub(crate) mod portal;
mod revoke;
pub(crate) mod secret;
pub(crate) mod send;
mod session_start;
pub(crate) mod tx;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};

pub(crate) use error::LoginError;

use crate::assertion::Assertions;
use crate::audit::{Audit, Event};
use crate::body::{Body, RequestBody};
use crate::clock::Clock;
use crate::config::{AppConfig, Config, Origin};
use crate::email::Email;
use crate::http::redirect;
use crate::mailer::Mailer;
use crate::pages::Pages;
use crate::policy::{self, LoginMethod};
use crate::random::Random;
use crate::session::{self, Claims, Sessions};
use crate::state::State;
use crate::store::Store;
use crate::users::Users;

/// The login page (stable path).
pub(crate) const LOGIN_PATH: &str = "/.otpgate/login";
/// Where codes are posted.
pub(crate) const CODE_PATH: &str = "/.otpgate/code";
/// The logout page (stable path).
pub(crate) const LOGOUT_PATH: &str = "/.otpgate/logout";
/// The one-time link landing page (stable path: links sit in inboxes for a day).
pub(crate) const LINK_PATH: &str = "/.otpgate/link";
/// The "choose a new password" page of a temporary-password login.
pub(crate) const PASSWORD_PATH: &str = "/.otpgate/password";
/// The identity assertions' public keys (stable path: apps are configured with it).
pub(crate) const CERTS_PATH: &str = "/.otpgate/certs";

/// The answer to "send me a code" (or a link, or a temporary password) is never faster than
/// this, so the time it takes says nothing about the address (the work behind it takes
/// microseconds either way).
const RESPONSE_FLOOR: Duration = Duration::from_millis(10);

/// The message for every failed code (docs/security.md#11).
pub(crate) const NO_ACCESS: &str = "That account does not have access.";
/// The message for a malformed address.
pub(crate) const INVALID_EMAIL: &str = "Enter a valid email address.";
const EXPIRED_FORM: &str = "Your sign-in form expired. Please try again.";

/// The long-lived parts the login pages use: handed in by the gateway, so this module depends on
/// the services it uses and not on the gateway itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Services<'a> {
    /// Cookie keys and revocations.
    pub(crate) sessions: &'a Sessions,
    /// Codes, login transactions and rate limits.
    pub(crate) state: &'a State,
    /// Passwords, links, failure counts, revocations.
    pub(crate) store: &'a Store,
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
    /// The identity-assertion keys (for the JWKS).
    pub(crate) assertions: &'a Assertions,
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
    /// On the single sign-on portal: the app's own origin, where return targets live and the
    /// hand-off lands. `origin`, `cookie_name` and `session_lifetime` are then the portal's.
    pub(crate) portal_for: Option<&'a Origin>,
}

/// One request for a gateway page.
pub(crate) struct Flow<'a> {
    svc: Services<'a>,
    site: Site<'a>,
    ip: IpAddr,
    /// The device cookie the request carries for this app (docs/security.md#39).
    device: Option<Claims>,
    /// On the portal: the nonce the app set in this browser when it sent it here; the
    /// hand-off code is bound to it (docs/security.md#44).
    handoff_state: Option<String>,
}

impl<'a> Flow<'a> {
    /// A request from `ip` for a gateway page of the app `site` describes.
    pub(crate) fn new(svc: Services<'a>, site: Site<'a>, ip: IpAddr) -> Self {
        Self {
            svc,
            site,
            ip,
            device: None,
            handoff_state: None,
        }
    }
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
    mut c: Flow<'_>,
    req: Request<RequestBody>,
    path: &str,
) -> Result<Response<Body>, LoginError> {
    c.device = c.read_device(req.headers());
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
        CERTS_PATH if read => c.certs(),
        portal::CALLBACK_PATH if read && c.site.portal_for.is_none() => {
            c.callback(req.uri().query(), req.headers()).await
        }
        LOGIN_PATH
        | CODE_PATH
        | LOGOUT_PATH
        | LINK_PATH
        | PASSWORD_PATH
        | CERTS_PATH
        | portal::CALLBACK_PATH => Err(LoginError::MethodNotAllowed),
        _ => Err(LoginError::NotFound),
    }
}

impl Flow<'_> {
    fn name(&self) -> &str {
        &self.site.app.name
    }

    fn origin(&self) -> String {
        self.site.origin.to_string()
    }

    /// The origin return targets belong to: the app's, also when its login runs on the portal.
    fn rd_origin(&self) -> &Origin {
        self.site.portal_for.unwrap_or(self.site.origin)
    }

    fn now_ms(&self) -> u64 {
        self.svc.clock.now_ms()
    }

    fn request_id(&self) -> String {
        crate::random::request_id(self.svc.random.as_ref())
    }

    fn audit(&self, e: Event<'_>) {
        self.site
            .audit
            .record(self.svc.clock.now(), e.app(self.name()).ip(self.ip));
    }

    /// The login transaction's cookie. On the portal, one per app: logins for two apps may be
    /// under way in two tabs of one browser, and neither may end the other's.
    fn tx_cookie(&self) -> std::borrow::Cow<'static, str> {
        let name = tx::cookie_name(self.site.origin.https);
        match self.site.portal_for {
            Some(_) => format!("{name}-{}", self.name()).into(),
            None => name.into(),
        }
    }

    /// What the forms of a login page on the portal carry in their address (`app=…&state=…`):
    /// which app the post is for and its hand-off nonce, so that each tab's post reaches its
    /// own app's login (the transaction it opens is sealed for that app, so a changed value
    /// opens nothing). Empty on an app.
    fn form_query(&self) -> String {
        if self.site.portal_for.is_none() {
            return String::new();
        }
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("app", self.name());
        if let Some(s) = &self.handoff_state {
            q.append_pair("state", s);
        }
        q.finish()
    }

    /// The user who logs in as `email`, if the user table has one.
    fn user(&self, email: &Email) -> Option<Arc<crate::users::User>> {
        self.svc.users.by_email(email.as_str()).cloned()
    }

    fn offers(&self, m: LoginMethod) -> bool {
        self.site.app.login_methods.contains(&m)
    }

    /// Whether the policy would let `email` in on the login's target (before mailing a code,
    /// and again after it was entered: policies may change in between).
    fn would_allow(&self, email: &Email, rd: &str, login_method: LoginMethod) -> bool {
        let path = url::Url::parse(rd)
            .ok()
            .filter(|u| u.host_str() == Some(self.rd_origin().host.as_str()))
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
}

/// The first 4 bytes of a session id, for correlating audit events (not enough to forge one).
fn short_id(id: &session::SessionId) -> String {
    crate::random::hex(&id.0[..4])
}

/// A subject line: the first line, without control characters (docs/security.md#9).
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// The state an operator's `users unlock` clears for an address, besides the store's failure
/// count: the password ban and its window, every device's failure budget, and the mail budgets
/// and cooldowns (every client's, and the backstop). Exact keys, then prefixes of per-client
/// keys (each ends in `:`, so no other address's keys share it).
pub(crate) fn unlock_keys(email: &Email) -> (Vec<String>, Vec<String>) {
    (
        vec![
            password::key_pw_ban(email),
            password::key_pw_failures(email),
            limits::key_sends_all(email),
        ],
        vec![
            device::key_failures_prefix(email.as_str()),
            limits::key_sends_prefix(email),
            limits::key_cooldown_prefix(email),
        ],
    )
}

/// The key that holds an address's password ban while it lasts (`users list` shows it).
pub(crate) fn ban_key(email: &Email) -> String {
    password::key_pw_ban(email)
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
