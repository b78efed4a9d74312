//! The login page: the forms of the app's methods on `GET /.otpgate/login`, and the post of
//! any of them, checked (transaction cookie, CSRF token, origin) and handed to its flow.

use std::collections::HashMap;

use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use minijinja::context;

use super::tx::{self, LoginTx};
use super::{EXPIRED_FORM, Flow, INVALID_EMAIL, LoginError};
use crate::body::{Body, RequestBody};
use crate::email::Email;
use crate::http::redirect;
use crate::policy::LoginMethod;
use crate::return_to;
use crate::session;

/// Largest form accepted.
const MAX_FORM: usize = 16 * 1024;

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
pub(super) struct View<'a> {
    pub(super) email: &'a str,
    pub(super) error: Option<&'a str>,
    pub(super) pw_email: &'a str,
    pub(super) pw_error: Option<&'a str>,
}

impl Flow<'_> {
    /// `POST /.otpgate/login`: one of the login page's forms.
    pub(super) async fn login_post(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, LoginError> {
        let started = tokio::time::Instant::now();
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let Some(tx) = self.checked_tx(&parts.headers, &form) else {
            return self.expired_form();
        };
        let Some(ask) = self.ask(form.get("method").map(String::as_str)) else {
            return Err(LoginError::BadForm);
        };
        let typed = form.get("email").map_or("", String::as_str);
        let Ok(email) = Email::parse(typed) else {
            // Decided from the syntax alone, before any lookup, limit or mail
            // (docs/security.md#6).
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

    /// The form a post's `method` field names, if the app offers it.
    fn ask(&self, method: Option<&str>) -> Option<Ask> {
        let first = [
            (LoginMethod::OneTimePin, Ask::Code),
            (LoginMethod::OneTimeLink, Ask::Link),
            (LoginMethod::OneTimeToken, Ask::TempPassword),
        ]
        .into_iter()
        .find(|(m, _)| self.offers(*m))
        .map(|(_, a)| a);
        match method {
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
        }
    }

    /// `GET /.otpgate/login`: the email form with a new transaction, or, for visitors who are
    /// signed in already, straight on to the validated target.
    pub(super) fn login_page(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, LoginError> {
        let target = return_to::rd_param(query)
            .and_then(|rd| return_to::validate(&rd, self.rd_origin(), self.site.origins));
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
            let to = target.map_or_else(|| return_to::root(self.rd_origin()), String::from);
            return Ok(redirect(StatusCode::FOUND, &to));
        }
        let rd = target.map_or_else(|| return_to::root(self.rd_origin()), String::from);
        // With a portal, people log in there once for every app.
        if self.site.config.portal.is_some() && self.site.portal_for.is_none() {
            return self.to_portal(&rd);
        }
        let tx = LoginTx::new(self.svc.random.as_ref(), self.now_ms(), rd)?;
        Ok(self.email_page(&tx, &View::default(), StatusCode::OK, true))
    }

    pub(super) fn email_page(
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
                app => self.name(), fq => self.form_query(), csrf, email => view.email, error => view.error,
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
                        &self.tx_cookie(),
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

    /// The transaction of a form post, if its cookie, CSRF token and origin all check out.
    pub(super) fn checked_tx(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Option<LoginTx> {
        let keys = self.svc.sessions.keys();
        let tx = LoginTx::from_headers(
            headers,
            &self.tx_cookie(),
            self.name(),
            &keys,
            self.now_ms(),
        )?;
        let token = form.get("csrf").map_or("", String::as_str);
        (tx::origin_ok(headers, &self.origin())
            && tx::csrf_ok(&keys, "login", self.name(), &tx.id, token))
        .then_some(tx)
    }

    /// A form that failed its CSRF check: start over with a fresh transaction.
    pub(super) fn expired_form(&self) -> Result<Response<Body>, LoginError> {
        let tx = LoginTx::new(
            self.svc.random.as_ref(),
            self.now_ms(),
            return_to::root(self.rd_origin()),
        )?;
        let view = View {
            error: Some(EXPIRED_FORM),
            ..View::default()
        };
        Ok(self.email_page(&tx, &view, StatusCode::BAD_REQUEST, true))
    }
}

/// Reads an `application/x-www-form-urlencoded` body (at most 16 KiB); the first value of each
/// field counts.
pub(super) async fn read_form(
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
