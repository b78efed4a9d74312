//! "Email me a sign-in link" / "Email me a temporary password" on the login page: the same
//! page for every well-formed address, after the same work (docs/security.md#10). Recording
//! the secret (a durable write) and mailing it happen in the background, for allowed people
//! only, so neither shows in the answer's timing; the temporary password's once-a-day rule is
//! applied there too (docs/security.md#24).

use std::net::IpAddr;
use std::sync::Arc;

use http::{Response, StatusCode};
use minijinja::context;

use super::send::{Issuer, Order, Prepared};
use super::tx::{self, LoginTx};
use super::{Flow, LoginError, RESPONSE_FLOOR};
use crate::audit::{Audit, Event};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::{Config, Origin};
use crate::email::Email;
use crate::mailer::Mailer;
use crate::metrics::AUTH_EMAILS;
use crate::pages::Pages;
use crate::policy::LoginMethod;
use crate::random::Random;
use crate::session::KeyRing;
use crate::store::Store;

/// At most this many link or temporary-password mails are being prepared at once in the
/// background; past it new ones are dropped (logged and counted), like a full mail queue.
const PREPARING: usize = 256;

fn preparing() -> &'static Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(PREPARING)))
}

/// The name of `method`'s mail in events, metrics and the page.
fn kind(method: LoginMethod) -> &'static str {
    if method == LoginMethod::OneTimeLink {
        "link"
    } else {
        "token"
    }
}

impl Flow<'_> {
    /// Answers the request for a link or temporary password for `email`.
    pub(super) async fn request_mail(
        &self,
        tx: &LoginTx,
        email: &Email,
        method: LoginMethod,
        started: tokio::time::Instant,
    ) -> Result<Response<Body>, LoginError> {
        let request_id = self.request_id();
        let kind = kind(method);
        self.audit(
            Event::new(&format!("{kind}.requested"))
                .email(email.as_str())
                .request(&request_id)
                .with("login_method", method.as_str()),
        );
        // Links and temporary passwords follow the same budgets and cooldown as codes.
        let client = self.client_for(email.as_str()).await?;
        let over = self.send_limits(email, client).await?;
        let reason = self
            .suppression(email, &tx.rd, method, over, client)
            .await?;
        self.spend(email, client, reason.is_none()).await?;
        // Allowed addresses that are not in the user table get their mail at the address
        // itself, like a PIN; known users at `temp_auth_email`, else their id
        // (docs/product.md#s5).
        let to = self
            .user(email)
            .and_then(|u| u.temp_auth_email.clone())
            .unwrap_or_else(|| email.clone());
        match reason {
            None => self.prepare_in_background(email, to, method, &tx.rd, &request_id),
            Some(reason) => {
                self.audit(
                    Event::new(&format!("{kind}.suppressed"))
                        .email(email.as_str())
                        .request(&request_id)
                        .with("reason", reason.as_str()),
                );
                ::metrics::counter!(AUTH_EMAILS, "app" => self.name().to_owned(), "method" => kind, "outcome" => "suppressed", "reason" => reason.as_str())
                    .increment(1);
                if self.svc.outbox {
                    tracing::info!(app = self.name(), email = %email, reason = reason.as_str(), kind, "no mail sent");
                }
            }
        }
        tokio::time::sleep_until(started + RESPONSE_FLOOR).await;
        Ok(self.sent_page(tx, email, kind))
    }

    /// Hands the mail to a background task, unless too many are being prepared already.
    fn prepare_in_background(
        &self,
        email: &Email,
        to: Email,
        method: LoginMethod,
        rd: &str,
        request_id: &str,
    ) {
        let Ok(slot) = preparing().clone().try_acquire_owned() else {
            let kind = kind(method);
            ::metrics::counter!(crate::metrics::MAIL_DROPPED, "kind" => kind).increment(1);
            tracing::error!(app = self.name(), to = %to, kind, "mail dropped: too many being prepared");
            return;
        };
        let job = Background {
            config: self.site.config.clone(),
            pages: self.site.pages.clone(),
            audit: self.site.audit.clone(),
            keys: Arc::clone(&*self.svc.sessions.keys()),
            store: self.svc.store.clone(),
            random: self.svc.random.clone(),
            mailer: self.svc.mailer.clone(),
            clock: self.svc.clock.clone(),
            app: self.name().to_owned(),
            origin: self.site.origin.clone(),
            portal: self.site.portal_for.is_some(),
            identity: email.clone(),
            to,
            rd: rd.to_owned(),
            request_id: request_id.to_owned(),
            ip: self.ip,
            method,
            now_ms: self.now_ms(),
        };
        tokio::spawn(async move {
            let _slot = slot;
            job.run().await;
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
            context! { app => self.name(), fq => self.form_query(), csrf, email => email.as_str(), method => kind, hours, rd => tx.rd.as_str() },
        )
    }
}

/// A mail being prepared after the answer has gone: owned copies of what it needs, since it
/// outlives the request.
struct Background {
    config: Arc<Config>,
    pages: Arc<Pages>,
    audit: Audit,
    keys: Arc<KeyRing>,
    store: Store,
    random: Arc<dyn Random>,
    mailer: Mailer,
    clock: Arc<dyn Clock>,
    app: String,
    origin: Origin,
    portal: bool,
    identity: Email,
    to: Email,
    rd: String,
    request_id: String,
    ip: IpAddr,
    method: LoginMethod,
    now_ms: u64,
}

impl Background {
    /// Records the secret, queues the mail, and audits and counts what came of it.
    async fn run(self) {
        let kind = kind(self.method);
        let issuer = Issuer {
            pages: &self.pages,
            keys: &self.keys,
            store: &self.store,
            random: self.random.as_ref(),
            providers: &self.config.identity_providers,
        };
        let order = Order {
            app: &self.app,
            origin: &self.origin,
            portal: self.portal,
            identity: &self.identity,
            to: &self.to,
            rd: &self.rd,
            method: self.method,
            force: false,
            now_ms: self.now_ms,
        };
        let (event, outcome) = match issuer.prepare(&order).await {
            Ok(Prepared::Mail(mail)) => {
                let queued = self.mailer.enqueue(mail);
                (
                    format!("{kind}.sent"),
                    if queued { "sent" } else { "dropped" },
                )
            }
            Ok(Prepared::Skipped) => (format!("{kind}.suppressed"), "reissue_after"),
            Err(e) => {
                tracing::error!(app = %self.app, error = %e, kind, "cannot prepare a sign-in mail");
                (format!("{kind}.failed"), "error")
            }
        };
        let mut e = Event::new(&event)
            .app(&self.app)
            .ip(self.ip)
            .email(self.identity.as_str())
            .request(&self.request_id);
        e = if event.ends_with(".sent") {
            e.with("to", self.to.as_str())
        } else {
            e.with("reason", outcome)
        };
        self.audit.record(self.clock.now(), e);
        let labels = if outcome == "sent" {
            ("sent", "")
        } else {
            ("suppressed", outcome)
        };
        ::metrics::counter!(AUTH_EMAILS, "app" => self.app, "method" => kind, "outcome" => labels.0, "reason" => labels.1)
            .increment(1);
    }
}
