//! Device cookies (OWASP's "slow down online guessing attacks with device cookies",
//! docs/security.md#39): after a successful login the browser gets a long-lived sealed cookie
//! naming the address. The account's limits, bans and locks are for clients without one; a
//! browser holding one for the address has a small budget of its own, so strangers hammering
//! an address cannot keep its owner out of a browser she has used before.

use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderValue;

use super::Flow;
use crate::config::units::Rate;
use crate::email::Email;
use crate::policy::LoginMethod;
use crate::session::{self, Claims, SessionId, TokenKind};

/// How long a device cookie lasts (renewed at every login on that browser).
pub(super) const LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Failed logins a known device may make for its address before it counts as any client.
pub(super) const FAILURES: Rate = Rate {
    count: 10,
    per: Duration::from_secs(15 * 60),
};

/// Who is asking for an address: a browser that logged in as it before (its device cookie's
/// id), or any other client (by IP address). Budgets and cooldowns are kept per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Client {
    /// A browser with a valid device cookie for the address, within its own failure budget.
    Device(SessionId),
    /// Anyone else.
    Stranger(std::net::IpAddr),
}

impl Client {
    /// Whether the account's own limits, bans and locks apply.
    pub(super) fn is_stranger(self) -> bool {
        matches!(self, Self::Stranger(_))
    }

    /// The part of a state key naming this client.
    pub(super) fn key(self) -> String {
        match self {
            Self::Device(id) => format!("d:{}", id.hex()),
            Self::Stranger(ip) => format!("ip:{ip}"),
        }
    }
}

/// The device cookie's name on an app.
pub(super) fn cookie_name(https: bool) -> &'static str {
    if https {
        session::DEVICE_COOKIE_HOST
    } else {
        session::DEVICE_COOKIE_PLAIN
    }
}

fn key_failures(email: &str, id: SessionId) -> String {
    format!("{}{}", key_failures_prefix(email), id.hex())
}
pub(super) fn key_failures_prefix(email: &str) -> String {
    format!("otpgate:devfail:{email}:")
}

impl Flow<'_> {
    /// The device cookie this request carries for this app, if one opens.
    pub(super) fn read_device(&self, headers: &HeaderMap) -> Option<Claims> {
        self.svc
            .sessions
            .of_kind(
                headers,
                TokenKind::Device,
                cookie_name(self.site.origin.https),
                self.name(),
                self.now_ms(),
                None,
            )
            .ok()
    }

    /// Who is asking for `email`: its known device while that device is within its failure
    /// budget, else a stranger.
    pub(super) async fn client_for(&self, email: &str) -> Result<Client, super::LoginError> {
        let Some(device) = self.device.as_ref().filter(|d| d.email().as_str() == email) else {
            return Ok(Client::Stranger(self.ip));
        };
        let failed = self
            .svc
            .state
            .count(&key_failures(email, device.id()))
            .await?;
        Ok(if failed < u64::from(FAILURES.count) {
            Client::Device(device.id())
        } else {
            Client::Stranger(self.ip)
        })
    }

    /// Counts a failed login of a known device against its own budget.
    pub(super) async fn device_failed(
        &self,
        email: &str,
        id: SessionId,
    ) -> Result<(), super::LoginError> {
        self.svc
            .state
            .hit(&key_failures(email, id), FAILURES.per)
            .await?;
        Ok(())
    }

    /// A new device cookie for `email`, set with every successful login.
    pub(super) fn device_cookie(&self, email: &Email, method: LoginMethod) -> Option<HeaderValue> {
        let (_, value) = self
            .svc
            .sessions
            .issue(
                TokenKind::Device,
                self.name(),
                email.clone(),
                method,
                LIFETIME,
                self.now_ms(),
            )
            .map_err(|e| tracing::error!(error = %e, "cannot seal a device cookie"))
            .ok()?;
        session::set_cookie(
            cookie_name(self.site.origin.https),
            &value,
            LIFETIME,
            self.site.origin.https,
        )
    }
}
