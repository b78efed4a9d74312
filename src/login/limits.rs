//! The limits every login method shares, and the accounting behind them, written once so that
//! every method and every address is counted the same way: requests per client IP, sends per
//! address and the resend cooldown (docs/security.md#17), failed logins per account with
//! growing delays and a hard cap (docs/security.md#16, docs/security.md#26), and why a
//! requested mail was not sent (seen by operators only, docs/security.md#10).

use std::net::IpAddr;
use std::time::Duration;

use super::{Flow, LoginError};
use crate::audit::Event;
use crate::email::Email;
use crate::metrics::RATE_LIMITED;
use crate::policy::LoginMethod;
use crate::store::Failures;

/// Failed logins after which answers are slowed down, doubling each time.
const DELAY_AFTER: u32 = 3;
/// The longest such delay.
const MAX_DELAY: Duration = Duration::from_secs(8);

pub(super) fn key_ip(ip: IpAddr) -> String {
    format!("otpgate:rl:ip:{ip}")
}
pub(super) fn key_sends(email: &Email) -> String {
    format!("otpgate:rl:send:{email}")
}
pub(super) fn key_cooldown(email: &Email) -> String {
    format!("otpgate:cool:{email}")
}
pub(super) fn key_index(email: &Email) -> String {
    format!("otpgate:pinidx:{email}")
}
pub(super) fn key_code(tx_hex: &str) -> String {
    format!("otpgate:pin:{tx_hex}")
}

/// Why no code, link or temporary password was mailed. Operators see it in the audit log and
/// metrics; visitors never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suppressed {
    PolicyBlock,
    UnknownUser,
    RateLimited,
    Locked,
}

impl Suppressed {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::PolicyBlock => "policy_block",
            Self::UnknownUser => "unknown_user",
            Self::RateLimited => "rate_limited",
            Self::Locked => "locked",
        }
    }
}

/// Which send limits a request went over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Over {
    pub(super) ip: bool,
    pub(super) address: bool,
    /// Only where a cooldown applies (PINs).
    pub(super) cooldown: bool,
}

impl Over {
    fn any(self) -> bool {
        self.ip || self.address || self.cooldown
    }
}

impl Flow<'_> {
    /// Counts a request against its client IP; whether that went over the limit.
    pub(super) async fn over_ip(&self) -> Result<bool, LoginError> {
        let limit = &self.site.config.rate_limits.login_requests_per_ip;
        let over = self.svc.state.hit(&key_ip(self.ip), limit.per).await? > u64::from(limit.count);
        if over {
            ::metrics::counter!(RATE_LIMITED, "limit" => "ip").increment(1);
        }
        Ok(over)
    }

    /// Counts a request for mail to `email` against every send limit, with the resend
    /// `cooldown` where one applies. The same state operations run, in the same order, for
    /// every well-formed address, whether or not it gets mail (docs/security.md#17).
    pub(super) async fn send_limits(
        &self,
        email: &Email,
        cooldown: Option<Duration>,
    ) -> Result<Over, LoginError> {
        let per_address = &self.site.config.rate_limits.code_sends_per_address;
        let state = self.svc.state;
        let ip = self.over_ip().await?;
        let address =
            state.hit(&key_sends(email), per_address.per).await? > u64::from(per_address.count);
        let cooldown = match cooldown {
            Some(d) => !state.put_new(&key_cooldown(email), b"1", d).await?,
            None => false,
        };
        for (over, limit) in [(address, "address"), (cooldown, "cooldown")] {
            if over {
                ::metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
            }
        }
        Ok(Over {
            ip,
            address,
            cooldown,
        })
    }

    /// Why `email` gets no mail for `method` on the way to `rd`, if it gets none. Reads the
    /// same records for every address, so the answer's timing does not tell them apart.
    pub(super) async fn suppression(
        &self,
        email: &Email,
        rd: &str,
        method: LoginMethod,
        over: Over,
    ) -> Result<Option<Suppressed>, LoginError> {
        let failures = self.failures(email.as_str()).await?;
        let known = self.user(email).is_some();
        Ok(if !self.would_allow(email, rd, method) {
            Some(if known {
                Suppressed::PolicyBlock
            } else {
                Suppressed::UnknownUser
            })
        } else if over.any() {
            Some(Suppressed::RateLimited)
        } else if failures.locked {
            Some(Suppressed::Locked)
        } else {
            None
        })
    }

    /// The account's failed logins so far.
    pub(super) async fn failures(&self, email: &str) -> Result<Failures, LoginError> {
        let e = email.to_owned();
        Ok(self.svc.store.run(move |s| s.failures(&e)).await?)
    }

    /// Records a failed login of `email`, whose count was `before` when the attempt started;
    /// the lock it may cause is audited once, on the failure that causes it.
    pub(super) async fn record_failure(
        &self,
        email: &str,
        before: Failures,
        request_id: &str,
    ) -> Result<Failures, LoginError> {
        let (e, now, cap) = (
            email.to_owned(),
            self.now_ms(),
            self.site.config.rate_limits.failed_logins_per_account,
        );
        let after = self
            .svc
            .store
            .run(move |s| s.record_failure(&e, now, cap))
            .await?;
        if after.locked && !before.locked {
            self.audit(
                Event::new("login.locked")
                    .email(email)
                    .request(request_id)
                    .with("failures", after.consecutive),
            );
        }
        Ok(after)
    }
}

/// Growing delays before the hard cap (docs/security.md#16): nothing for the first few
/// failures, then a quarter second doubling up to [`MAX_DELAY`].
pub(super) async fn slow_down(failures: Failures) {
    if failures.consecutive >= DELAY_AFTER {
        let n = (failures.consecutive - DELAY_AFTER).min(10);
        tokio::time::sleep((Duration::from_millis(250) * 2u32.pow(n)).min(MAX_DELAY)).await;
    }
}
