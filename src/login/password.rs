//! Password logins (Zscaler's "One-Time Token") on the login page's password form: the
//! user's own password, or the temporary one, which leads to a restricted session whose only
//! use is choosing a password (docs/security.md#23, in `choose_password`).
//!
//! Every attempt costs the same whoever it names: an Argon2id check runs against the stored
//! hash or a dummy one, the temporary-password record is read and its digest computed, and the
//! failure accounting is per address whether or not anyone has it (docs/security.md#26).
//! Failures are throttled per client IP, per account with growing delays and locks that
//! expire (a hard cap is released by `otpgate users unlock`), and Authelia-style: 3 failures
//! within 2 minutes ban the address silently for 5 minutes. Locks and bans are for strangers;
//! a browser with the address's device cookie has its own budget (docs/security.md#39).

use std::time::Duration;

use http::{Response, StatusCode};
use subtle::ConstantTimeEq as _;

use super::device::Client;
use super::limits::slow_down;
use super::page::View;
use super::tx::LoginTx;
use super::{Flow, LoginError, NO_ACCESS, secret};
use crate::audit::Event;
use crate::body::Body;
use crate::email::Email;
use crate::metrics::{LOGINS, RATE_LIMITED};
use crate::policy::LoginMethod;
use crate::store::Failures;

/// Failures within [`BAN_WINDOW`] that ban an address for [`BAN`].
const BAN_AFTER: u64 = 3;
const BAN_WINDOW: Duration = Duration::from_secs(2 * 60);
const BAN: Duration = Duration::from_secs(5 * 60);

pub(super) fn key_pw_failures(email: &Email) -> String {
    format!("otpgate:pwfail:{email}")
}
pub(super) fn key_pw_ban(email: &Email) -> String {
    format!("otpgate:pwban:{email}")
}

/// What an attempt came to.
enum Verdict {
    /// The user's own password.
    Password,
    /// The unused temporary password, now used up.
    Temporary,
    /// Anything else, with the reason for the audit log.
    Failed(&'static str),
}

impl Flow<'_> {
    /// The password form of the login page.
    pub(super) async fn password_login(
        &self,
        tx: &LoginTx,
        email: &Email,
        typed: &str,
    ) -> Result<Response<Body>, LoginError> {
        let request_id = self.request_id();
        let state = self.svc.state;
        if self.over_ip().await? {
            return Ok(self.password_failed(tx, email, "throttled", &request_id));
        }
        let client = self.client_for(email.as_str()).await?;
        let failures = self.failures(email.as_str()).await?;
        slow_down(failures, client).await;
        // Locks and the silent ban are for strangers; a known device has its own budget.
        let banned = state.get(&key_pw_ban(email)).await?.is_some() && client.is_stranger();
        let block = if failures.locked && client.is_stranger() {
            Some("locked")
        } else if banned {
            Some("banned")
        } else if !self.would_allow(email, &tx.rd, LoginMethod::OneTimeToken) {
            Some("policy")
        } else {
            None
        };
        // The check runs in every case, so a blocked attempt takes as long as any other.
        let verdict = self.check_password(email, typed, block.is_none()).await?;
        let verdict = block.map_or(verdict, Verdict::Failed);
        match verdict {
            Verdict::Password => {
                self.svc.store.reset_failures(email.as_str()).await?;
                state.delete(&key_pw_failures(email)).await?;
                self.start_session(email, LoginMethod::OneTimeToken, &tx.rd, &request_id)
                    .await
            }
            Verdict::Temporary => {
                self.svc.store.reset_failures(email.as_str()).await?;
                self.restricted(email, &request_id)
            }
            Verdict::Failed(reason) => {
                // Every failure is counted, whatever its reason: the durable write takes the
                // same time for everyone, so the answer's timing says nothing about whether
                // the address exists, may log in, or is banned.
                let blocked = block.is_some_and(|b| b != "policy");
                self.count_failure(email, failures, client, blocked, &request_id)
                    .await?;
                Ok(self.password_failed(tx, email, reason, &request_id))
            }
        }
    }

    /// Compares the typed password with the user's password and temporary password, doing the
    /// same work whether either exists; uses the temporary password up when it matches and
    /// `use_temporary` is set.
    async fn check_password(
        &self,
        email: &Email,
        typed: &str,
        use_temporary: bool,
    ) -> Result<Verdict, LoginError> {
        if typed.is_empty() || typed.chars().count() > secret::MAX_PASSWORD_CHARS {
            return Ok(Verdict::Failed("wrong_password"));
        }
        let (hash, temp) = self.svc.store.passwords(email.as_str()).await?;
        let own = secret::verify(typed.to_owned(), hash).await;
        let keys = self.svc.sessions.keys();
        let now = self.now_ms();
        let kid = temp
            .as_ref()
            .map_or(keys.current().id.as_str(), |t| t.kid.as_str());
        let key = keys.get(kid).unwrap_or_else(|| keys.current());
        let digest = secret::temp_digest(key, email.as_str(), typed);
        let temp_ok = temp.as_ref().is_some_and(|t| {
            let same: bool = t.digest.ct_eq(&digest).into();
            same && !t.used && now < t.expires_ms
        });
        if own {
            return Ok(Verdict::Password);
        }
        if !temp_ok {
            return Ok(Verdict::Failed("wrong_password"));
        }
        if !use_temporary {
            return Ok(Verdict::Temporary);
        }
        let used = self
            .svc
            .store
            .use_temp_password(email.as_str(), &digest, now)
            .await?;
        Ok(if used {
            Verdict::Temporary
        } else {
            Verdict::Failed("temporary_password_used")
        })
    }

    /// A failed attempt counts towards the account's locks and the address's ban, once if it
    /// came during a lock or ban (`blocked`); a known device's toward its own budget.
    async fn count_failure(
        &self,
        email: &Email,
        before: Failures,
        client: Client,
        blocked: bool,
        request_id: &str,
    ) -> Result<(), LoginError> {
        self.record_failure(email.as_str(), before, client, blocked, request_id)
            .await?;
        if blocked || !client.is_stranger() {
            return Ok(());
        }
        let state = self.svc.state;
        if state.hit(&key_pw_failures(email), BAN_WINDOW).await? >= BAN_AFTER {
            state.put_new(&key_pw_ban(email), b"1", BAN).await?;
            state.delete(&key_pw_failures(email)).await?;
            ::metrics::counter!(RATE_LIMITED, "limit" => "password_ban").increment(1);
        }
        Ok(())
    }

    /// Every failed password login gets the same page (docs/security.md#11).
    fn password_failed(
        &self,
        tx: &LoginTx,
        email: &Email,
        reason: &str,
        request_id: &str,
    ) -> Response<Body> {
        self.audit(
            Event::new("login.failed")
                .email(email.as_str())
                .request(request_id)
                .with("reason", reason)
                .with("login_method", "onetimetoken"),
        );
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => "onetimetoken", "outcome" => "failure").increment(1);
        let view = View {
            pw_email: email.as_str(),
            pw_error: Some(NO_ACCESS),
            ..View::default()
        };
        self.email_page(tx, &view, StatusCode::OK, false)
    }
}
