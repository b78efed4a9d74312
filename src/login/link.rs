//! Using a one-time link (Zscaler's "One-Time Link"; requesting one is in `mail_request`).
//!
//! `GET /.otpgate/link?t=…` only shows a confirmation page: mail scanners and link previews
//! fetch links, and must not use them up or log anyone in (docs/security.md#20). The page's
//! button posts the token with a CSRF token bound to a fresh login transaction; only that post
//! uses the link — atomically, so one link gives one session — and answers with a 303, which
//! also takes the token out of the address bar (docs/security.md#21).

use http::header::SET_COOKIE;
use http::{Request, Response, StatusCode};
use minijinja::context;

use super::page::read_form;
use super::tx::{self, LoginTx};
use super::{Flow, LoginError, NO_ACCESS, secret};
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::email::Email;
use crate::metrics::LOGINS;
use crate::policy::LoginMethod;
use crate::session;

impl Flow<'_> {
    /// `GET /.otpgate/link?t=…`: the confirmation page. Looks the link up without using it.
    pub(super) async fn link_page(
        &self,
        query: Option<&str>,
    ) -> Result<Response<Body>, LoginError> {
        let t = query
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "t")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        // Guessing links is throttled per client like codes (docs/security.md#41): a client
        // over its limit sees the same page as for a bad link, and every miss counts.
        let over = self.ip_over_limit().await?;
        let found = match self.link_digest(&t).filter(|_| !over) {
            Some(digest) => {
                let now = self.now_ms();
                self.svc
                    .store
                    .link(&digest, now)
                    .await?
                    .filter(|l| l.app == self.name())
            }
            None => None,
        };
        let Some(link) = found else {
            if !over {
                self.over_ip().await?;
            }
            return Ok(self.site.pages.page(
                StatusCode::OK,
                "link_confirm.html",
                context! { app => self.name(), valid => false, error => NO_ACCESS },
            ));
        };
        let tx = LoginTx::new(self.svc.random.as_ref(), self.now_ms(), link.rd.clone())?;
        let keys = self.svc.sessions.keys();
        let csrf = tx::csrf_token(&keys, "link", self.name(), &tx.id);
        let mut r = self.site.pages.page(
            StatusCode::OK,
            "link_confirm.html",
            context! { app => self.name(), fq => self.form_query(), valid => true, email => link.email, csrf, t },
        );
        match tx.seal(self.name(), &keys, self.svc.random.as_ref()) {
            Ok(v) => {
                if let Some(h) =
                    session::set_cookie(&self.tx_cookie(), &v, tx::LIFETIME, self.site.origin.https)
                {
                    r.headers_mut().append(SET_COOKIE, h);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot seal a login transaction"),
        }
        Ok(r)
    }

    /// The digest a `?t=` value is stored under, if it is well-formed and its key is known.
    fn link_digest(&self, t: &str) -> Option<[u8; 32]> {
        let (kid, token) = secret::parse_link(t)?;
        let keys = self.svc.sessions.keys();
        keys.get(kid).map(|k| secret::link_digest(k, token))
    }

    /// `POST /.otpgate/link`: uses the link (once) and logs in.
    pub(super) async fn link_login(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let request_id = self.request_id();
        let keys = self.svc.sessions.keys();
        let tx = LoginTx::from_headers(
            &parts.headers,
            &self.tx_cookie(),
            self.name(),
            &keys,
            self.now_ms(),
        );
        let csrf = form.get("csrf").map_or("", String::as_str);
        let Some(tx) = tx.filter(|tx| {
            tx::origin_ok(&parts.headers, &self.origin())
                && tx::csrf_ok(&keys, "link", self.name(), &tx.id, csrf)
        }) else {
            return Ok(self.link_failed(None, "csrf", &request_id));
        };
        if self.over_ip().await? {
            return Ok(self.link_failed(None, "throttled", &request_id));
        }
        let t = form.get("t").map_or("", String::as_str);
        let Some(digest) = self.link_digest(t) else {
            return Ok(self.link_failed(None, "malformed", &request_id));
        };
        let now = self.now_ms();
        let Some(link) = self.svc.store.use_link(&digest, now).await? else {
            return Ok(self.link_failed(None, "unknown_or_used", &request_id));
        };
        let Ok(email) = Email::parse(&link.email) else {
            return Ok(self.link_failed(None, "invalid_record", &request_id));
        };
        if link.app != self.name() {
            return Ok(self.link_failed(Some(&email), "other_app", &request_id));
        }
        let client = self.client_for(email.as_str()).await?;
        let failures = self.failures(email.as_str()).await?;
        if failures.locked && client.is_stranger() {
            return Ok(self.link_failed(Some(&email), "locked", &request_id));
        }
        // The target travelled in the link record and the sealed transaction; it is checked
        // against the policy and validated again here (docs/security.md#19, docs/security.md#5).
        let rd = if tx.rd == link.rd {
            link.rd
        } else {
            return Ok(self.link_failed(Some(&email), "target_mismatch", &request_id));
        };
        if !self.would_allow(&email, &rd, LoginMethod::OneTimeLink) {
            return Ok(self.link_failed(Some(&email), "policy", &request_id));
        }
        self.start_session(&email, LoginMethod::OneTimeLink, &rd, &request_id)
            .await
    }

    /// Every failed link gets the same page (docs/security.md#11).
    fn link_failed(&self, email: Option<&Email>, reason: &str, request_id: &str) -> Response<Body> {
        let mut e = Event::new("login.failed")
            .request(request_id)
            .with("reason", reason)
            .with("login_method", "onetimelink");
        if let Some(email) = email {
            e = e.email(email.as_str());
        }
        self.audit(e);
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => "onetimelink", "outcome" => "failure").increment(1);
        self.site.pages.page(
            StatusCode::OK,
            "link_confirm.html",
            context! { app => self.name(), valid => false, error => NO_ACCESS },
        )
    }
}
