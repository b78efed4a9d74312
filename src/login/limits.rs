//! The limits every login method shares, and the accounting behind them, written once so that
//! every method and every address is counted the same way: requests per client IP, mails per
//! address and client with a resend cooldown and a per-address backstop (docs/security.md#17),
//! failed logins per account with growing delays and locks that expire, up to a hard cap
//! (docs/security.md#16, docs/security.md#26), and why a requested mail was not sent (seen by
//! operators only, docs/security.md#10).
//!
//! None of it is a switch a stranger can flip against a user (docs/security.md#39): budgets
//! and cooldowns are per client, only mails sent spend them, and a browser with the address's
//! device cookie (`device`) keeps its own budget and is not locked by strangers' failures.

use std::net::IpAddr;
use std::time::Duration;

use super::device::Client;
use super::{Flow, LoginError};
use crate::audit::Event;
use crate::email::Email;
use crate::metrics::RATE_LIMITED;
use crate::policy::LoginMethod;
use crate::store::{Failures, LockPolicy};

/// Failed logins after which answers are slowed down, doubling each time.
const DELAY_AFTER: u32 = 3;
/// The longest such delay.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// Mails one address may get from all clients together per window, as a multiple of the
/// per-client budget: a backstop so that many strangers together cannot flood an inbox, which
/// a browser with the address's device cookie is not held to.
const BACKSTOP: u32 = 4;
/// The first lock of an account (docs/security.md#39); each further one lasts twice as long.
const FIRST_LOCK: Duration = Duration::from_secs(5 * 60);
/// The longest lock short of the hard cap.
const LONGEST_LOCK: Duration = Duration::from_secs(60 * 60);
/// Consecutive failures from strangers that lock an account until `users unlock` (NIST
/// 800-63B s5.2.2).
const HARD_CAP: u32 = 100;

pub(super) fn key_ip(ip: IpAddr) -> String {
    format!("otpgate:rl:ip:{ip}")
}
fn key_sends(email: &Email, client: Client) -> String {
    format!("{}{}", key_sends_prefix(email), client.key())
}
pub(super) fn key_sends_prefix(email: &Email) -> String {
    format!("otpgate:rl:send:{email}:")
}
pub(super) fn key_sends_all(email: &Email) -> String {
    format!("otpgate:rl:sendall:{email}")
}
fn key_cooldown(email: &Email, client: Client) -> String {
    format!("{}{}", key_cooldown_prefix(email), client.key())
}
pub(super) fn key_cooldown_prefix(email: &Email) -> String {
    format!("otpgate:cool:{email}:")
}
/// The live code of one client for one address: a newer code from the same client replaces it;
/// other clients' codes stay (docs/security.md#39).
pub(super) fn key_index(email: &Email, client: Client) -> String {
    format!("otpgate:pinidx:{email}:{}", client.key())
}
pub(super) fn key_code(tx_hex: &str) -> String {
    format!("otpgate:pin:{tx_hex}")
}
/// Where the writes of a request that mails nothing go, so every request does the same work.
const KEY_DECOY: &str = "otpgate:rl:decoy";

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

    /// Whether this client is over its limit already, without counting this request.
    pub(super) async fn ip_over_limit(&self) -> Result<bool, LoginError> {
        let limit = &self.site.config.rate_limits.login_requests_per_ip;
        Ok(self.svc.state.count(&key_ip(self.ip)).await? >= u64::from(limit.count))
    }

    /// Checks a request for mail to `email` from `client` against the send limits: the
    /// client's own budget and cooldown, and for strangers the address's backstop. Reads only
    /// (besides the per-IP count): budgets count mails sent, see [`Flow::spend`]. The same
    /// operations run, in the same order, for every well-formed address (docs/security.md#17).
    pub(super) async fn send_limits(
        &self,
        email: &Email,
        client: Client,
    ) -> Result<Over, LoginError> {
        let per = &self.site.config.rate_limits.code_sends_per_address;
        let state = self.svc.state;
        let ip = self.over_ip().await?;
        // One round trip for the three reads (several replicas share them on Redis).
        let (own, all, cool) = (
            key_sends(email, client),
            key_sends_all(email),
            key_cooldown(email, client),
        );
        let (counts, flags) = state.read_many(&[&own, &all], &[&cool]).await?;
        // A missing answer counts as over the limit (fail closed).
        let (own, all) = match counts.as_slice() {
            &[own, all] => (own, all),
            _ => (u64::MAX, u64::MAX),
        };
        let own = own >= u64::from(per.count);
        let backstop = client.is_stranger() && all >= u64::from(per.count.saturating_mul(BACKSTOP));
        let cooldown = flags.first().copied().unwrap_or(true);
        let address = own || backstop;
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

    /// Spends the budgets of a request that was mailed (`sent`), or the same number of writes
    /// on a decoy key for one that was not: suppressed requests never use up an address's
    /// budget (docs/security.md#39), and the work is the same either way.
    pub(super) async fn spend(
        &self,
        email: &Email,
        client: Client,
        sent: bool,
    ) -> Result<(), LoginError> {
        let rates = &self.site.config.rate_limits;
        let (window, cooldown) = (rates.code_sends_per_address.per, rates.code_resend_cooldown);
        let state = self.svc.state;
        let (own, all, cool) = if sent {
            (
                key_sends(email, client),
                key_sends_all(email),
                key_cooldown(email, client),
            )
        } else {
            (
                KEY_DECOY.to_owned(),
                KEY_DECOY.to_owned(),
                KEY_DECOY.to_owned(),
            )
        };
        state
            .hit_many(&[&own, &all], window, &cool, cooldown)
            .await?;
        Ok(())
    }

    /// Why `email` gets no mail for `method` on the way to `rd`, if it gets none. Reads the
    /// same records for every address, so the answer's timing does not tell them apart.
    pub(super) async fn suppression(
        &self,
        email: &Email,
        rd: &str,
        method: LoginMethod,
        over: Over,
        client: Client,
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
        } else if failures.locked && client.is_stranger() {
            Some(Suppressed::Locked)
        } else {
            None
        })
    }

    /// The account's failed logins so far.
    pub(super) async fn failures(&self, email: &str) -> Result<Failures, LoginError> {
        Ok(self.svc.store.failures(email, self.now_ms()).await?)
    }

    /// How strangers' failures lock accounts here.
    fn lock_policy(&self) -> LockPolicy {
        LockPolicy {
            after: self.site.config.rate_limits.failed_logins_per_account,
            first: FIRST_LOCK,
            longest: LONGEST_LOCK,
            hard_cap: HARD_CAP,
        }
    }

    /// Records a failed login of `email` by `client`, whose account stood at `before` when the
    /// attempt started. A known device spends its own budget; a stranger's failure counts
    /// toward the account's locks, once if it came while the account was locked or banned
    /// (`blocked`). A new lock is audited once, on the failure that causes it.
    pub(super) async fn record_failure(
        &self,
        email: &str,
        before: Failures,
        client: Client,
        blocked: bool,
        request_id: &str,
    ) -> Result<Failures, LoginError> {
        if let Client::Device(id) = client {
            self.device_failed(email, id).await?;
            return Ok(before);
        }
        let (now, policy) = (self.now_ms(), self.lock_policy());
        let count = !(blocked || before.locked);
        let after = self
            .svc
            .store
            .record_failure(email, now, policy, count)
            .await?;
        if after.locks > before.locks || (after.locked && !before.locked) {
            self.audit(
                Event::new("login.locked")
                    .email(email)
                    .request(request_id)
                    .with("failures", after.consecutive)
                    .with("until", lock_end(after.lock_until_ms)),
            );
        }
        Ok(after)
    }
}

/// When a lock ends, for the audit log.
fn lock_end(until_ms: Option<u64>) -> String {
    match until_ms {
        Some(u) if u < LockPolicy::FOREVER => crate::audit::rfc3339(Duration::from_millis(u)),
        _ => "until unlocked".to_owned(),
    }
}

/// Growing delays before a lock (docs/security.md#16), for strangers: nothing for the first
/// few failures, then a quarter second doubling up to [`MAX_DELAY`].
pub(super) async fn slow_down(failures: Failures, client: Client) {
    if client.is_stranger() && failures.consecutive >= DELAY_AFTER {
        let n = (failures.consecutive - DELAY_AFTER).min(10);
        tokio::time::sleep((Duration::from_millis(250) * 2u32.pow(n)).min(MAX_DELAY)).await;
    }
}
