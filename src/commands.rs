//! The administrative commands behind the command line (`mint-cookie`, `policy explain`,
//! `sessions revoke`, `users`, `keys`, `store copy`). They work on the config and the store directly, so they
//! run beside a live gateway; `main.rs` only parses arguments and prints. The user table they
//! see is the one the gateway serves: the config's users merged with the directory snapshot the
//! gateway last persisted ([`load_users`]).

mod apps;
mod service_token;
mod shared_state;
mod store_copy;

use std::net::IpAddr;
use std::time::Duration;

pub use apps::apps_list;
pub use service_token::{policy_explain_service, service_token_create, service_token_rotate};
pub use store_copy::{Side, store_copy};

use crate::assertion::SigningKeys;
use crate::audit::{Audit, AuditError, Event};
use crate::clock::Clock;
use crate::config::{AppConfig, Config, MAX_SESSION};
use crate::email::Email;
use crate::policy::{self, Decision, LoginMethod};
use crate::random::Random;
use crate::session::keys::KeyError;
use crate::session::{self, KeyRing, SealError, Sessions, TokenKind};
use crate::state::StateError;
use crate::store::{Revocation, RevocationKind, Store, StoreError};
use crate::users::Users;

/// Why a command was refused (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The arguments name something that does not exist or is not allowed.
    #[error("{0}")]
    Refused(String),
    /// The keys file.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The assertion signing-keys file.
    #[error(transparent)]
    SigningKeys(#[from] crate::assertion::SigningKeyError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared state (Redis).
    #[error("the shared state: {0}")]
    State(#[from] StateError),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Sealing a cookie.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The templates.
    #[error(transparent)]
    Pages(#[from] crate::pages::PagesError),
    /// The mail transport.
    #[error(transparent)]
    Mail(#[from] crate::mailer::MailError),
    /// The service-token key file.
    #[error(transparent)]
    ServiceToken(#[from] crate::session::service_token::ServiceTokenError),
}

fn app<'a>(config: &'a Config, name: &str) -> Result<&'a AppConfig, CommandError> {
    config.apps.iter().find(|a| a.name == name).ok_or_else(|| {
        let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
        CommandError::Refused(format!(
            "no app named {name:?} (apps: {})",
            names.join(", ")
        ))
    })
}

fn email(text: &str) -> Result<Email, CommandError> {
    Email::parse(text)
        .map_err(|e| CommandError::Refused(format!("{text:?} is not a valid address: {e}")))
}

/// Whether the app is served over https (its public URL, else whether an HTTPS listener exists).
fn https(config: &Config, a: &AppConfig) -> bool {
    a.public_url
        .as_ref()
        .map_or(config.listen.https.is_some(), |o| o.https)
}

/// `otpgate mint-cookie`: a valid gateway cookie, printed as `NAME=VALUE` (audited).
pub fn mint_cookie(
    config: &Config,
    app_name: &str,
    address: &str,
    ttl: Option<Duration>,
    method: LoginMethod,
    clock: &dyn Clock,
    random: &std::sync::Arc<dyn Random>,
) -> Result<String, CommandError> {
    let a = app(config, app_name)?;
    let email = email(address)?;
    let ttl = ttl.unwrap_or_else(|| a.session_duration.unwrap_or(config.session.duration));
    if ttl.is_zero() || ttl > MAX_SESSION {
        return Err(CommandError::Refused(
            "--ttl must be above 0s and at most 30d".into(),
        ));
    }
    let keys = KeyRing::load_or_create(
        &config.session.keys_file,
        random.as_ref(),
        clock.unix_secs(),
    )?;
    let sessions = Sessions::new(keys, random.clone());
    let now_ms = u64::try_from(clock.now().as_millis()).unwrap_or(u64::MAX);
    let (claims, value) =
        sessions.issue(TokenKind::Session, &a.name, email, method, ttl, now_ms)?;
    let audit = Audit::open(&config.audit)?;
    let request_id = crate::random::request_id(random.as_ref());
    audit.record(
        clock.now(),
        Event::new("cookie.minted")
            .app(&a.name)
            .email(claims.email.as_str())
            .request(&request_id)
            .with("ttl_secs", ttl.as_secs())
            .with("login_method", method.as_str())
            .with("via", "command line"),
    );
    Ok(format!(
        "{}={value}",
        session::cookie_name(https(config, a))
    ))
}

/// `otpgate policy explain`: which policy decides a request, and why.
pub async fn policy_explain(
    config: &Config,
    app_name: &str,
    address: &str,
    path: &str,
    ip: IpAddr,
    method: LoginMethod,
) -> Result<String, CommandError> {
    let a = app(config, app_name)?;
    let email = email(address)?;
    let path = crate::path::normalise(path)
        .map_err(|e| CommandError::Refused(format!("{path:?}: {e} (the gateway answers 400)")))?;
    let users = load_users(config).await?;
    let user = users.by_email(email.as_str());
    let groups = user.map_or(&[][..], |u| &u.groups[..]);
    let who = policy::Identity {
        email: &email,
        groups,
        login_method: method,
    };
    let facts = policy::Request { path: &path, ip };

    let mut out = String::new();
    let group_list: Vec<&str> = groups.iter().map(AsRef::as_ref).collect();
    out.push_str(&format!(
        "app {:?}; request {path} from {ip} as {email} (user {}; groups: {}; login method {method})\n",
        a.name,
        user.map_or(email.as_str(), |u| u.id.as_str()),
        if group_list.is_empty() { "none".to_owned() } else { group_list.join(", ") },
    ));
    let before = match policy::decide(&a.policies, &facts, None) {
        Decision::Bypass(p) => format!("bypass by policy {:?}: no login needed", p.name),
        Decision::Block(p) => format!(
            "block by policy {:?}: refused without asking for a login",
            p.name
        ),
        Decision::NoMatch => "deny: no policy can match (deny by default)".to_owned(),
        Decision::LoginRequired(p) | Decision::Allow(p) | Decision::ServiceAuth(p) => format!(
            "login required (policy {:?} needs to know who it is)",
            p.name
        ),
    };
    out.push_str(&format!("before a login: {before}\n"));
    let (decision, steps) = policy::explain(&a.policies, &facts, Some(&who));
    out.push_str(&steps_text(&steps));
    out.push_str(&format!("decision: {}\n", verdict(decision)));
    Ok(out)
}

/// The last line of `policy explain`.
fn verdict(decision: Decision<'_>) -> String {
    match decision {
        Decision::Bypass(p) => format!("bypass by policy {:?}", p.name),
        Decision::Allow(p) => format!("allow by policy {:?}", p.name),
        Decision::ServiceAuth(p) => format!("service_auth by policy {:?}", p.name),
        Decision::Block(p) => format!("block by policy {:?}", p.name),
        Decision::NoMatch | Decision::LoginRequired(_) => {
            "deny: no policy matched (deny by default)".to_owned()
        }
    }
}

/// The numbered steps of `policy explain`.
fn steps_text(steps: &[policy::Step]) -> String {
    let mut out = String::new();
    for (i, s) in steps.iter().enumerate() {
        out.push_str(&format!(
            "{}. {} ({}): {}\n",
            i + 1,
            s.policy,
            s.action.as_str(),
            s.verdict
        ));
    }
    out
}

/// `otpgate sessions revoke --user ID`: ends every session of a user issued before now
/// ("log out everywhere"). Running gateways apply it within the revocation poll interval; with
/// the state on Redis it is pushed to them at once.
pub async fn revoke_user(
    config: &Config,
    user: &str,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let store = open_store(config).await?;
    let shared = shared_state::open(config)?;
    let addresses = addresses_of(config, &store, user).await?;
    let audit = Audit::open(&config.audit)?;
    let now_ms = u64::try_from(clock.now().as_millis()).unwrap_or(u64::MAX);
    let until =
        now_ms + u64::try_from(MAX_SESSION.as_millis()).unwrap_or(0) + session::cookie::SKEW_MS;
    let request_id = crate::random::request_id(random);
    let mut revoked = Vec::new();
    for a in &addresses {
        let seq = store
            .revoke(RevocationKind::User, a, now_ms, until, now_ms)
            .await?;
        revoked.push(Revocation {
            seq,
            kind: RevocationKind::User,
            subject: a.clone(),
            not_before_ms: now_ms,
            expires_ms: until,
        });
        audit.record(
            clock.now(),
            Event::new("session.revoked")
                .email(a)
                .request(&request_id)
                .with("scope", "all sessions")
                .with("via", "command line"),
        );
    }
    shared_state::announce(shared.as_ref(), &revoked).await;
    Ok(format!(
        "revoked every session of {} issued before {}; running gateways apply it within {}s",
        addresses.join(", "),
        crate::audit::rfc3339(clock.now()),
        session::revocation::POLL_INTERVAL.as_secs()
    ))
}

/// `otpgate users unlock ID`: clears the failed-login count and lock of a user (by address,
/// or every address of a configured user id); with the state on Redis also its password ban,
/// device failure budgets and mail budgets there.
pub async fn unlock_user(
    config: &Config,
    user: &str,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let store = open_store(config).await?;
    let shared = shared_state::open(config)?;
    let addresses = addresses_of(config, &store, user).await?;
    let audit = Audit::open(&config.audit)?;
    let request_id = crate::random::request_id(random);
    let mut cleared = Vec::new();
    for a in &addresses {
        let mut any = store.reset_failures(a).await?;
        if let Some(state) = &shared {
            any |= shared_state::clear_account(state, a).await? > 0;
        }
        if any {
            cleared.push(a.as_str());
        }
        audit.record(
            clock.now(),
            Event::new("user.unlocked")
                .email(a)
                .request(&request_id)
                .with("via", "command line"),
        );
    }
    Ok(if cleared.is_empty() {
        format!("{} had no failed logins", addresses.join(", "))
    } else {
        format!(
            "unlocked {}; failed-login counts cleared",
            cleared.join(", ")
        )
    })
}

/// The user table the gateway serves: the config's users merged with the persisted directory
/// snapshot (when a directory is configured and the snapshot was taken with its settings).
pub async fn load_users(config: &Config) -> Result<Users, CommandError> {
    match &config.directory {
        None => Ok(Users::from_config(&config.users)),
        Some(_) => {
            let store = open_store(config).await?;
            users_with_store(config, &store).await
        }
    }
}

/// The configured store (`credentials`): SQLite in `data_dir` or PostgreSQL.
pub async fn open_store(config: &Config) -> Result<Store, CommandError> {
    Ok(Store::open(&config.credentials, &config.data_dir).await?)
}

async fn users_with_store(config: &Config, store: &Store) -> Result<Users, CommandError> {
    let snapshot = match &config.directory {
        None => None,
        Some(d) => store
            .directory_snapshot()
            .await?
            .filter(|s| s.fingerprint == d.fingerprint()),
    };
    Ok(Users::merged(&config.users, snapshot.as_ref()))
}

/// `otpgate users list`: one line per user (sorted by id): id, the address one-time links and
/// temporary passwords go to (or `-`), groups (or `-`), source, `password` / `no password`, and
/// `locked` while too many failed logins have the account locked (with the state on Redis also
/// `banned` during a password ban).
pub async fn users_list(config: &Config, clock: &dyn Clock) -> Result<String, CommandError> {
    let now_ms = clock.now_ms();
    let store = open_store(config).await?;
    let shared = shared_state::open(config)?;
    let users = users_with_store(config, &store).await?;
    let mut rows: Vec<[String; 6]> = Vec::with_capacity(users.len());
    for u in users.all() {
        // Passwords and failure counts are kept per address: the login address and the
        // temporary-authentication address both count.
        let mut addresses: Vec<String> = u
            .login_email()
            .into_iter()
            .chain(u.temp_auth_email.clone())
            .map(|e| e.to_string())
            .collect();
        addresses.dedup();
        let mut password = false;
        let mut locked = false;
        let mut banned = false;
        for a in &addresses {
            password |= store.has_password(a).await?;
            locked |= store.failures(a, now_ms).await?.locked;
            if let Some(state) = &shared {
                banned |= shared_state::banned(state, a).await?;
            }
        }
        let groups: Vec<&str> = u.groups.iter().map(AsRef::as_ref).collect();
        rows.push([
            u.id.clone(),
            u.mail_to()
                .map_or_else(|| "-".to_owned(), |e| e.to_string()),
            if groups.is_empty() {
                "-".to_owned()
            } else {
                groups.join(",")
            },
            u.source.to_string(),
            if password { "password" } else { "no password" }.to_owned(),
            match (locked, banned) {
                (true, _) => "locked",
                (false, true) => "banned",
                (false, false) => "",
            }
            .to_owned(),
        ]);
    }
    if rows.is_empty() {
        return Ok("no users".to_owned());
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// The addresses a user id or address stands for.
async fn addresses_of(
    config: &Config,
    store: &Store,
    user: &str,
) -> Result<Vec<String>, CommandError> {
    let users = users_with_store(config, store).await?;
    let mut addresses: Vec<String> = Vec::new();
    if let Ok(e) = Email::parse(user) {
        addresses.push(e.to_string());
    }
    if let Some(u) = users.by_id(user.trim()) {
        if let Ok(e) = Email::parse(&u.id) {
            addresses.push(e.to_string());
        }
        if let Some(t) = &u.temp_auth_email {
            addresses.push(t.to_string());
        }
    }
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(CommandError::Refused(format!(
            "{user:?} is neither a known user (config or directory) nor an address"
        )));
    }
    Ok(addresses)
}

/// `otpgate keys list`.
pub fn keys_list(
    config: &Config,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let ring = KeyRing::load_or_create(&config.session.keys_file, random, clock.unix_secs())?;
    let current = &ring.current().id;
    Ok(key_lines(
        ring.keys().map(|k| (k.id.as_str(), k.created)),
        current,
    ))
}

/// One line per key: its id, when it was made, and which one is current.
fn key_lines<'a>(keys: impl Iterator<Item = (&'a str, u64)>, current: &str) -> String {
    let mut out = String::new();
    for (id, created) in keys {
        let mark = if id == current { "  (current)" } else { "" };
        out.push_str(&format!(
            "{id}  created {}{mark}\n",
            crate::audit::rfc3339(Duration::from_secs(created))
        ));
    }
    out
}

/// `otpgate keys rotate`: a new current key; the old ones stay valid until retired.
pub fn keys_rotate(
    config: &Config,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let path = &config.session.keys_file;
    KeyRing::load_or_create(path, random, clock.unix_secs())?;
    let id = KeyRing::rotate(path, random, clock.unix_secs())?;
    Ok(format!(
        "new current key {id}; older keys stay valid. Send SIGHUP to running gateways (and copy {} to every replica).",
        path.display()
    ))
}

/// The signing-keys file, or why there is none.
fn signing_keys_file(config: &Config) -> Result<&std::path::Path, CommandError> {
    config
        .identity_assertion
        .as_ref()
        .map(|a| a.keys_file.as_path())
        .ok_or_else(|| CommandError::Refused("identity_assertion is switched off".into()))
}

/// `otpgate keys list --jwt`: the assertion signing keys the JWKS publishes.
pub fn keys_list_jwt(
    config: &Config,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let path = signing_keys_file(config)?;
    let keys = SigningKeys::load_or_create(path, random, clock.unix_secs())?;
    let current = &keys.current().id;
    Ok(key_lines(keys.keys().map(|k| (&*k.id, k.created)), current))
}

/// `otpgate keys rotate --jwt`: a new current signing key; the previous one stays published
/// (and its assertions verifiable) for an hour.
pub fn keys_rotate_jwt(
    config: &Config,
    clock: &dyn Clock,
    random: &dyn Random,
) -> Result<String, CommandError> {
    let path = signing_keys_file(config)?;
    SigningKeys::load_or_create(path, random, clock.unix_secs())?;
    let id = SigningKeys::rotate(path, random, clock.unix_secs())?;
    Ok(format!(
        "new current signing key {id}; the previous one stays published for an hour. Send SIGHUP to running gateways (and copy {} to every replica).",
        path.display()
    ))
}

/// `otpgate keys retire ID`: cookies sealed with that key stop working.
pub fn keys_retire(config: &Config, id: &str) -> Result<String, CommandError> {
    KeyRing::retire(&config.session.keys_file, id)?;
    Ok(format!("retired key {id}; send SIGHUP to running gateways"))
}

/// `otpgate send-auth-email`: mails a one-time link or a temporary password to users and
/// group members at once; one line per user. The bool is false when a user could not be
/// mailed (exit 1).
#[allow(clippy::too_many_arguments)] // the command line's options, one each
pub async fn send_auth_email(
    config: &Config,
    users: &[String],
    groups: &[String],
    app_name: Option<&str>,
    method: Option<LoginMethod>,
    force: bool,
    clock: &dyn Clock,
    random: &std::sync::Arc<dyn Random>,
) -> Result<(String, bool), CommandError> {
    if users.is_empty() && groups.is_empty() {
        return Err(CommandError::Refused(
            "name at least one --user or --group".into(),
        ));
    }
    let (a, method) = crate::login::send::target(config, app_name, method)
        .map_err(|e| CommandError::Refused(e.to_string()))?;
    let bound = crate::config::BoundAddrs {
        http: config.listen.http,
        https: config.listen.https,
        admin: config.listen.admin,
    };
    let origin = a.origin(&bound);
    let keys = KeyRing::load_or_create(
        &config.session.keys_file,
        random.as_ref(),
        clock.unix_secs(),
    )?;
    let store = open_store(config).await?;
    let pages = crate::pages::Pages::load(config.templates_dir.as_deref())?;
    let audit = Audit::open(&config.audit)?;
    let mailer = crate::mailer::Mailer::start(&config.mail)?;
    let table = users_with_store(config, &store).await?;
    let operator = crate::login::send::Operator {
        issuer: crate::login::send::Issuer {
            pages: &pages,
            keys: &keys,
            store: &store,
            random: random.as_ref(),
            providers: &config.identity_providers,
        },
        users: &table,
        mailer: &mailer,
        audit: &audit,
        clock,
        via: "command line",
    };
    let job = crate::login::send::Job {
        app: &a.name,
        origin: &origin,
        method,
        force,
        users,
        groups,
    };
    let lines = operator.send(&job).await;
    mailer.shutdown(Duration::from_secs(5)).await;
    let mut out = String::new();
    for g in groups {
        if table.in_group(g).is_empty() {
            out.push_str(&format!("group {g}: no users\n"));
        }
    }
    for (id, outcome) in &lines {
        out.push_str(&format!("{id}: {}\n", outcome.as_str()));
    }
    Ok((out, lines.iter().all(|(_, o)| o.ok())))
}
