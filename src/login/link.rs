//! The one-time link (Zscaler's "One-Time Link"): requesting one from the login page, and
//! using one.
//!
//! `GET /.otpgate/link?t=…` only shows a confirmation page: mail scanners and link previews
//! fetch links, and must not use them up or log anyone in (SECURITY.md 20). The page's button
//! posts the token with a CSRF token bound to a fresh login transaction; only that post uses
//! the link — atomically, so one link gives one session — and answers with a 303, which also
//! takes the token out of the address bar (SECURITY.md 21).

use std::sync::Arc;

use http::header::SET_COOKIE;
use http::{Request, Response, StatusCode};
use minijinja::context;

use super::send::{Issuer, Order, Prepared};
use super::tx::{self, LoginTx};
use super::{Flow, LoginError, NO_ACCESS, Suppressed, key_ip, key_sends, read_form, secret};
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::email::Email;
use crate::metrics::{AUTH_EMAILS, LOGINS, RATE_LIMITED};
use crate::policy::LoginMethod;
use crate::session;

/// At most this many link or temporary-password mails are being prepared at once in the
/// background; past it new ones are dropped (logged and counted), like a full mail queue.
const PREPARING: usize = 256;

fn preparing() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(PREPARING)))
}

impl Flow<'_> {
    /// "Email me a sign-in link" / "Email me a temporary password": the same page for every
    /// well-formed address, after the same work (SECURITY.md 10). Recording the secret (a
    /// durable write) and mailing it happen in the background, for allowed people only, so
    /// neither shows in the answer's timing; the temporary password's once-a-day rule is
    /// applied there too (SECURITY.md 24).
    pub(super) async fn request_mail(
        &self,
        tx: &LoginTx,
        email: &Email,
        method: LoginMethod,
        started: tokio::time::Instant,
    ) -> Result<Response<Body>, LoginError> {
        let request_id = crate::random::request_id(self.svc.random.as_ref());
        let kind = if method == LoginMethod::OneTimeLink {
            "link"
        } else {
            "token"
        };
        self.audit(
            Event::new(if kind == "link" {
                "link.requested"
            } else {
                "token.requested"
            })
            .email(email.as_str())
            .request(&request_id)
            .with("login_method", method.as_str()),
        );
        let limits = &self.site.config.rate_limits;
        let state = self.svc.state;
        let per_ip = state
            .hit(&key_ip(self.ip), limits.login_requests_per_ip.per)
            .await?;
        let per_address = state
            .hit(&key_sends(email), limits.code_sends_per_address.per)
            .await?;
        let over_ip = per_ip > u64::from(limits.login_requests_per_ip.count);
        let over_address = per_address > u64::from(limits.code_sends_per_address.count);
        for (over, limit) in [(over_ip, "ip"), (over_address, "address")] {
            if over {
                ::metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
            }
        }
        let failures = self.failures(email.as_str()).await?;
        let user = self.user(email);
        let reason = if !self.would_allow(email, &tx.rd, method) {
            Some(if user.is_some() {
                Suppressed::PolicyBlock
            } else {
                Suppressed::UnknownUser
            })
        } else if over_ip || over_address {
            Some(Suppressed::RateLimited)
        } else if failures.locked {
            Some(Suppressed::Locked)
        } else {
            None
        };
        // Allowed addresses that are not in the user table get their mail at the address
        // itself, like a PIN; known users at `temp_auth_email`, else their id (SPEC.md §5).
        let to = user
            .as_ref()
            .and_then(|u| u.temp_auth_email.clone())
            .unwrap_or_else(|| email.clone());
        let app_label = self.name().to_owned();
        match reason {
            None => self.prepare_in_background(email, to, method, &tx.rd, &request_id),
            Some(reason) => {
                self.audit(
                    Event::new(if kind == "link" {
                        "link.suppressed"
                    } else {
                        "token.suppressed"
                    })
                    .email(email.as_str())
                    .request(&request_id)
                    .with("reason", reason.as_str()),
                );
                ::metrics::counter!(AUTH_EMAILS, "app" => app_label, "method" => kind, "outcome" => "suppressed", "reason" => reason.as_str())
                    .increment(1);
                if self.svc.outbox {
                    tracing::info!(app = self.name(), email = %email, reason = reason.as_str(), kind, "no mail sent");
                }
            }
        }
        tokio::time::sleep_until(started + super::RESPONSE_FLOOR).await;
        Ok(self.sent_page(tx, email, kind))
    }

    fn prepare_in_background(
        &self,
        email: &Email,
        to: Email,
        method: LoginMethod,
        rd: &str,
        request_id: &str,
    ) {
        let kind = if method == LoginMethod::OneTimeLink {
            "link"
        } else {
            "token"
        };
        let Ok(slot) = preparing().clone().try_acquire_owned() else {
            ::metrics::counter!(crate::metrics::MAIL_DROPPED, "kind" => kind).increment(1);
            tracing::error!(app = self.name(), to = %to, kind, "mail dropped: too many being prepared");
            return;
        };
        let (config, pages, audit) = (
            self.site.config.clone(),
            self.site.pages.clone(),
            self.site.audit.clone(),
        );
        let keys = Arc::clone(&*self.svc.sessions.keys());
        let credentials = self.svc.store.clone();
        let random = self.svc.random.clone();
        let mailer = self.svc.mailer.clone();
        let clock = self.svc.clock.clone();
        let (app, origin, identity, rd, request_id, ip) = (
            self.name().to_owned(),
            self.site.origin.clone(),
            email.clone(),
            rd.to_owned(),
            request_id.to_owned(),
            self.ip,
        );
        let now_ms = self.now_ms();
        tokio::spawn(async move {
            let _slot = slot;
            let issuer = Issuer {
                pages: &pages,
                keys: &keys,
                credentials: &credentials,
                random: random.as_ref(),
                providers: &config.identity_providers,
            };
            let order = Order {
                app: &app,
                origin: &origin,
                identity: &identity,
                to: &to,
                rd: &rd,
                method,
                force: false,
                now_ms,
            };
            let (event, outcome) = match issuer.prepare(&order).await {
                Ok(Prepared::Mail(mail)) => {
                    let queued = mailer.enqueue(mail);
                    (
                        format!("{kind}.sent"),
                        if queued { "sent" } else { "dropped" },
                    )
                }
                Ok(Prepared::Skipped) => (format!("{kind}.suppressed"), "reissue_after"),
                Err(e) => {
                    tracing::error!(app = %app, error = %e, kind, "cannot prepare a sign-in mail");
                    (format!("{kind}.failed"), "error")
                }
            };
            let mut e = Event::new(&event)
                .app(&app)
                .ip(ip)
                .email(identity.as_str())
                .request(&request_id);
            e = if event.ends_with(".sent") {
                e.with("to", to.as_str())
            } else {
                e.with("reason", outcome)
            };
            audit.record(clock.now(), e);
            let labels = if outcome == "sent" {
                ("sent", "")
            } else {
                ("suppressed", outcome)
            };
            ::metrics::counter!(AUTH_EMAILS, "app" => app, "method" => kind, "outcome" => labels.0, "reason" => labels.1)
                .increment(1);
        });
    }

    fn sent_page(&self, tx: &LoginTx, email: &Email, kind: &str) -> Response<Body> {
        let keys = self.svc.sessions.keys();
        let csrf = tx::csrf_token(&keys, "login", self.name(), &tx.id);
        let idp = &self.site.config.identity_providers;
        let ttl = if kind == "link" {
            idp.link.as_ref().map(|l| l.ttl)
        } else {
            idp.token.as_ref().map(|t| t.reissue_after)
        };
        let hours = ttl.map_or(24, |t| t.as_secs().div_ceil(3600));
        self.site.pages.page(
            StatusCode::OK,
            "sent.html",
            context! { app => self.name(), csrf, email => email.as_str(), method => kind, hours, rd => tx.rd.as_str() },
        )
    }

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
        let found = match self.link_digest(&t) {
            Some(digest) => {
                let now = self.now_ms();
                self.svc
                    .store
                    .run(move |s| s.link(&digest, now))
                    .await?
                    .filter(|l| l.app == self.name())
            }
            None => None,
        };
        let Some(link) = found else {
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
            context! { app => self.name(), valid => true, email => link.email, csrf, t },
        );
        match tx.seal(self.name(), &keys, self.svc.random.as_ref()) {
            Ok(v) => {
                if let Some(h) =
                    session::set_cookie(self.tx_cookie(), &v, tx::LIFETIME, self.site.origin.https)
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
        let request_id = crate::random::request_id(self.svc.random.as_ref());
        let keys = self.svc.sessions.keys();
        let tx = LoginTx::from_headers(
            &parts.headers,
            self.tx_cookie(),
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
        let limits = &self.site.config.rate_limits;
        if self
            .svc
            .state
            .hit(&key_ip(self.ip), limits.login_requests_per_ip.per)
            .await?
            > u64::from(limits.login_requests_per_ip.count)
        {
            ::metrics::counter!(RATE_LIMITED, "limit" => "ip").increment(1);
            return Ok(self.link_failed(None, "throttled", &request_id));
        }
        let t = form.get("t").map_or("", String::as_str);
        let Some(digest) = self.link_digest(t) else {
            return Ok(self.link_failed(None, "malformed", &request_id));
        };
        let now = self.now_ms();
        let Some(link) = self
            .svc
            .store
            .run(move |s| s.use_link(&digest, now))
            .await?
        else {
            return Ok(self.link_failed(None, "unknown_or_used", &request_id));
        };
        let Ok(email) = Email::parse(&link.email) else {
            return Ok(self.link_failed(None, "invalid_record", &request_id));
        };
        if link.app != self.name() {
            return Ok(self.link_failed(Some(&email), "other_app", &request_id));
        }
        let failures = self.failures(email.as_str()).await?;
        if failures.locked {
            return Ok(self.link_failed(Some(&email), "locked", &request_id));
        }
        // The target travelled in the link record and the sealed transaction; it is checked
        // against the policy and validated again here (SECURITY.md 19, 5).
        let rd = if tx.rd == link.rd {
            link.rd
        } else {
            return Ok(self.link_failed(Some(&email), "target_mismatch", &request_id));
        };
        if !self.would_allow(&email, &rd, LoginMethod::OneTimeLink) {
            return Ok(self.link_failed(Some(&email), "policy", &request_id));
        }
        self.start_session(&email, LoginMethod::OneTimeLink, &rd, &request_id)
    }

    /// Every failed link gets the same page (SECURITY.md 11).
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
