//! Making the Zscaler-style mails: a one-time link or a temporary password, recorded (as keyed
//! digests) in the credentials store and rendered into a mail. The same code serves the
//! visitor's own request from the login page, the operator's `otpgate send-auth-email` and the
//! admin API; only the delivery differs (queued for visitors, sent at once for operators, who
//! get a line per user).

use std::time::Duration;

use minijinja::context;

use super::secret;
use super::{LINK_PATH, LOGIN_PATH, one_line};
use crate::config::{AppConfig, Config, IdentityProviders, Origin};
use crate::email::Email;
use crate::mailer::OutgoingMail;
use crate::pages::{Pages, PagesError};
use crate::policy::LoginMethod;
use crate::random::Random;
use crate::session::KeyRing;
use crate::store::{Link, Store, StoreError, TempPassword};

/// Why a "Send Authentication Email" names no app or method that can be mailed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TargetError(String);

/// The app and method of a "Send Authentication Email" (the command line and the admin API
/// alike): `method` defaults to the config's `temporary_authentication`, `app` to the first app
/// offering it.
pub(crate) fn target<'a>(
    config: &'a Config,
    app_name: Option<&str>,
    method: Option<LoginMethod>,
) -> Result<(&'a AppConfig, LoginMethod), TargetError> {
    let refuse = |s: String| Err(TargetError(s));
    let method = method.unwrap_or(config.temporary_authentication);
    if method == LoginMethod::OneTimePin {
        return refuse(
            "the method is onetimelink or onetimetoken (PINs are requested at the login page)"
                .into(),
        );
    }
    if !config.identity_providers.enabled(method) {
        return refuse(format!("{method} is not among identity_providers"));
    }
    let found = match app_name {
        Some(name) => config.apps.iter().find(|a| a.name == name),
        None => config
            .apps
            .iter()
            .find(|a| a.login_methods.contains(&method)),
    };
    let Some(a) = found else {
        return refuse(match app_name {
            Some(name) => {
                let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
                format!("no app named {name:?} (apps: {})", names.join(", "))
            }
            None => format!("no app offers {method}"),
        });
    };
    if !a.login_methods.contains(&method) {
        return refuse(format!(
            "app {:?} does not offer {method} (its login_methods)",
            a.name
        ));
    }
    Ok((a, method))
}

/// Why a mail could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The method is not among the identity providers (or is the PIN, which is not mailed
    /// this way).
    #[error("{0} is not an enabled identity provider for authentication emails")]
    NotOffered(LoginMethod),
    /// No randomness.
    #[error("no randomness available")]
    Random(#[from] crate::random::RandomError),
    /// The credentials store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A template.
    #[error(transparent)]
    Render(#[from] PagesError),
}

/// What the operator asked for, or what the visitor's request comes to.
#[derive(Debug, Clone)]
pub(crate) struct Order<'a> {
    /// The app named in the mail and logged in to.
    pub app: &'a str,
    /// Its public origin: the link and the login address are built from it (docs/security.md#21).
    pub origin: &'a Origin,
    /// `origin` is the single sign-on portal's: the link and the login address name the app.
    pub portal: bool,
    /// Who logs in.
    pub identity: &'a Email,
    /// Where the mail goes (`temp_auth_email`, else the identity).
    pub to: &'a Email,
    /// The validated return target a link leads to.
    pub rd: &'a str,
    /// `onetimelink` or `onetimetoken`.
    pub method: LoginMethod,
    /// Send a temporary password even within `reissue_after` of the last one (operators only).
    pub force: bool,
    /// Now, Unix milliseconds.
    pub now_ms: u64,
}

/// The outcome.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// Recorded; this mail carries the secret.
    Mail(OutgoingMail),
    /// A temporary password was sent within `reissue_after`: nothing recorded, nothing to
    /// send, the earlier password stays valid (docs/security.md#24).
    Skipped,
}

/// Everything a mail is made from.
#[derive(Clone, Copy)]
pub(crate) struct Issuer<'a> {
    /// The templates.
    pub pages: &'a Pages,
    /// The keys the digests are made with.
    pub keys: &'a KeyRing,
    /// Where the digests are recorded.
    pub store: &'a Store,
    /// Randomness.
    pub random: &'a dyn Random,
    /// Lifetimes and the reissue rule.
    pub providers: &'a IdentityProviders,
}

impl std::fmt::Debug for Issuer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Issuer<'_> {
    /// Records a new link or temporary password and renders its mail.
    pub(crate) async fn prepare(&self, o: &Order<'_>) -> Result<Prepared, SendError> {
        match o.method {
            LoginMethod::OneTimeLink => self.link(o).await,
            LoginMethod::OneTimeToken => self.token(o).await,
            m @ LoginMethod::OneTimePin => Err(SendError::NotOffered(m)),
        }
    }

    async fn link(&self, o: &Order<'_>) -> Result<Prepared, SendError> {
        let idp = self
            .providers
            .link
            .as_ref()
            .ok_or(SendError::NotOffered(o.method))?;
        let (param, digest) = secret::new_link(self.keys.current(), self.random)?;
        let record = Link {
            digest,
            email: o.identity.to_string(),
            app: o.app.to_owned(),
            rd: o.rd.to_owned(),
            issued_ms: o.now_ms,
            expires_ms: o.now_ms.saturating_add(ms(idp.ttl)),
        };
        self.store.put_link(&record).await?;
        let link = if o.portal {
            format!("{}{LINK_PATH}?t={param}&app={}", o.origin, o.app)
        } else {
            format!("{}{LINK_PATH}?t={param}", o.origin)
        };
        let hours = idp.ttl.as_secs().div_ceil(3600);
        let ctx = context! { app => o.app, link, hours, email => o.identity.as_str() };
        let mail = self.render(o, "link", "link", ctx)?;
        Ok(Prepared::Mail(mail))
    }

    async fn token(&self, o: &Order<'_>) -> Result<Prepared, SendError> {
        let idp = self
            .providers
            .token
            .as_ref()
            .ok_or(SendError::NotOffered(o.method))?;
        let password = secret::new_temp_password(self.random)?;
        let key = self.keys.current();
        let record = TempPassword {
            email: o.identity.to_string(),
            digest: secret::temp_digest(key, o.identity.as_str(), &password),
            kid: key.id.clone(),
            issued_ms: o.now_ms,
            expires_ms: o.now_ms.saturating_add(ms(idp.ttl)),
            used: false,
        };
        let (reissue, force) = (ms(idp.reissue_after), o.force);
        let recorded = self
            .store
            .issue_temp_password(&record, reissue, force)
            .await?;
        if !recorded {
            return Ok(Prepared::Skipped);
        }
        let login_url = if o.portal {
            format!("{}{LOGIN_PATH}?app={}", o.origin, o.app)
        } else {
            format!("{}{LOGIN_PATH}", o.origin)
        };
        let hours = idp.ttl.as_secs().div_ceil(3600);
        let ctx =
            context! { app => o.app, password, login_url, hours, email => o.identity.as_str() };
        let mail = self.render(o, "token", "token", ctx)?;
        Ok(Prepared::Mail(mail))
    }

    fn render(
        &self,
        o: &Order<'_>,
        template: &str,
        kind: &'static str,
        ctx: minijinja::Value,
    ) -> Result<OutgoingMail, SendError> {
        let subject = self
            .pages
            .render(&format!("{template}_subject.txt"), ctx.clone())?;
        let text = self.pages.render(&format!("{template}.txt"), ctx.clone())?;
        let html = self.pages.render(&format!("{template}.html"), ctx).ok();
        Ok(OutgoingMail {
            to: o.to.clone(),
            subject: one_line(&subject),
            text,
            html,
            kind,
            app: o.app.to_owned(),
        })
    }
}

/// What became of one user of an operator's send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The mail left (handed to the relay or written to the outbox).
    Sent,
    /// A temporary password went out within `reissue_after`; the earlier one stays valid.
    Skipped,
    /// Neither `temp_auth_email` nor an id that is an address.
    NoAddress,
    /// Neither a user id nor an address.
    UnknownUser,
    /// Recorded but not delivered, or not recorded (the reason is logged).
    Failed,
}

impl Outcome {
    /// The word printed after the user id.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Skipped => "skipped (sent within 24h)",
            Self::NoAddress => "no address",
            Self::UnknownUser => "unknown user",
            Self::Failed => "not sent",
        }
    }

    /// Whether the user got what was asked for (or has it from earlier).
    pub(crate) fn ok(&self) -> bool {
        matches!(self, Self::Sent | Self::Skipped)
    }
}

/// "Send Authentication Email" (Zscaler's admin action), for the command line and the admin
/// API: users by id and the members of groups, each mailed a link or a temporary password at
/// once, with one outcome per user, audited as `auth_email.sent`.
#[derive(Debug)]
pub(crate) struct Operator<'a> {
    /// Records and renders.
    pub issuer: Issuer<'a>,
    /// Who the ids and groups name.
    pub users: &'a crate::users::Users,
    /// Delivers at once.
    pub mailer: &'a crate::mailer::Mailer,
    /// `auth_email.sent` events.
    pub audit: &'a crate::audit::Audit,
    /// Now.
    pub clock: &'a dyn crate::clock::Clock,
    /// `command line` or `admin api`, for the audit log.
    pub via: &'static str,
}

/// One operator's request.
#[derive(Debug, Clone)]
pub(crate) struct Job<'a> {
    /// The app named in the mails; links log in to it.
    pub app: &'a str,
    /// Its public origin.
    pub origin: &'a Origin,
    /// `onetimelink` or `onetimetoken`.
    pub method: LoginMethod,
    /// Override the once-per-`reissue_after` rule (audited).
    pub force: bool,
    /// User ids (or addresses).
    pub users: &'a [String],
    /// Group names.
    pub groups: &'a [String],
}

/// Who one line of the job is about.
struct Recipient {
    id: String,
    identity: Option<Email>,
    to: Option<Email>,
    known: bool,
}

impl Operator<'_> {
    fn recipients(&self, job: &Job<'_>) -> Vec<Recipient> {
        let mut out: Vec<Recipient> = Vec::new();
        let mut push = |t: Recipient| {
            if !out.iter().any(|o| o.id == t.id) {
                out.push(t);
            }
        };
        let of_user = |u: &crate::users::User| Recipient {
            id: u.id.clone(),
            identity: Email::parse(&u.id)
                .ok()
                .or_else(|| u.temp_auth_email.clone()),
            to: u
                .temp_auth_email
                .clone()
                .or_else(|| Email::parse(&u.id).ok()),
            known: true,
        };
        for id in job.users {
            let user = self.users.by_id(id).or_else(|| {
                Email::parse(id)
                    .ok()
                    .and_then(|e| self.users.by_email(e.as_str()))
            });
            match (user, Email::parse(id)) {
                (Some(u), _) => push(of_user(u)),
                // An address outside the user table gets its mail there, as at the login page.
                (None, Ok(e)) => push(Recipient {
                    id: id.clone(),
                    identity: Some(e.clone()),
                    to: Some(e),
                    known: true,
                }),
                (None, Err(_)) => push(Recipient {
                    id: id.clone(),
                    identity: None,
                    to: None,
                    known: false,
                }),
            }
        }
        for g in job.groups {
            for u in self.users.in_group(g) {
                push(of_user(&u));
            }
        }
        out
    }

    /// Sends to every user the job names, in order (users first, then group members, each
    /// once), and reports per user.
    pub(crate) async fn send(&self, job: &Job<'_>) -> Vec<(String, Outcome)> {
        let mut lines = Vec::new();
        let rd = crate::return_to::root(job.origin);
        for t in self.recipients(job) {
            let outcome = match (&t.identity, &t.to) {
                _ if !t.known => Outcome::UnknownUser,
                (Some(identity), Some(to)) => self.send_one(job, identity, to, &rd).await,
                _ => Outcome::NoAddress,
            };
            lines.push((t.id, outcome));
        }
        lines
    }

    async fn send_one(&self, job: &Job<'_>, identity: &Email, to: &Email, rd: &str) -> Outcome {
        let now = self.clock.now();
        let order = Order {
            app: job.app,
            origin: job.origin,
            portal: false,
            identity,
            to,
            rd,
            method: job.method,
            force: job.force,
            now_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        };
        let outcome = match self.issuer.prepare(&order).await {
            Ok(Prepared::Mail(mail)) => {
                if self.mailer.send_now(&mail).await {
                    Outcome::Sent
                } else {
                    Outcome::Failed
                }
            }
            Ok(Prepared::Skipped) => Outcome::Skipped,
            Err(e) => {
                tracing::error!(app = job.app, error = %e, "cannot prepare a sign-in mail");
                Outcome::Failed
            }
        };
        let request_id = crate::random::request_id(self.issuer.random);
        self.audit.record(
            now,
            crate::audit::Event::new("auth_email.sent")
                .app(job.app)
                .email(identity.as_str())
                .request(&request_id)
                .with("to", to.as_str())
                .with("login_method", job.method.as_str())
                .with("forced", job.force)
                .with("outcome", outcome.as_str())
                .with("via", self.via),
        );
        outcome
    }
}
