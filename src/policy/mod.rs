//! Access policies: "may this request in?". Pure: no I/O, no clock, no allocation per decision.
//!
//! The model is Cloudflare Access's: an app has ordered policies, the first one that matches
//! decides, and no match means deny. A policy matches when its `paths` cover the normalised
//! request path, any `include` selector matches (OR), every `require` selector matches (AND)
//! and no `exclude` selector matches (NOT).
//!
//! Before a login there is no identity, so selectors about the person (email, domain, group,
//! login method) are *unknown*. A policy whose outcome is unknown, or an `allow` that matches,
//! means a login is needed; after the login the whole list is evaluated again with the identity.
//!
//! A request presenting a valid service token is decided as that service instead
//! ([`decide_service`]): only `service_auth`, `bypass` and `block` policies apply to it, selectors
//! about people never match it, and `service_auth` policies never match a person.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::email::Email;
use crate::path::prefix_covers;

mod service;

pub use service::{decide_service, explain_service};

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let a logged-in person through.
    Allow,
    /// Refuse, logged in or not.
    Block,
    /// Let anyone through without a login (public paths).
    Bypass,
    /// Let a service (a valid service token) through; never a person, never a login page.
    ServiceAuth,
}

impl Action {
    /// Parses `allow`, `block` or `bypass`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Self::Allow),
            "block" => Some(Self::Block),
            "bypass" => Some(Self::Bypass),
            "service_auth" => Some(Self::ServiceAuth),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::Bypass => "bypass",
            Self::ServiceAuth => "service_auth",
        }
    }
}

/// A login method, named after the identity-provider types of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoginMethod {
    /// A one-time PIN mailed to the address typed in.
    OneTimePin,
    /// A one-time link mailed to the user's temporary-authentication address.
    OneTimeLink,
    /// A temporary password (and, after it, the password the user chose).
    OneTimeToken,
}

impl LoginMethod {
    /// Every method, in config order.
    pub const ALL: [Self; 3] = [Self::OneTimePin, Self::OneTimeLink, Self::OneTimeToken];

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The config spelling (`onetimepin`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneTimePin => "onetimepin",
            Self::OneTimeLink => "onetimelink",
            Self::OneTimeToken => "onetimetoken",
        }
    }
}

impl fmt::Display for LoginMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Everyone (with a login unless the action is bypass).
    Everyone,
    /// Exactly this normalised address.
    Email(Email),
    /// Addresses whose domain is exactly this (lower-case) domain.
    EmailDomain(String),
    /// Members of this group.
    Group(String),
    /// Clients whose address lies in this network.
    Ip(IpNet),
    /// Sessions obtained with this login method.
    LoginMethod(LoginMethod),
    /// Requests presenting the service token of this name.
    ServiceToken(String),
    /// Requests presenting any valid service token.
    AnyServiceToken,
}

/// Who a request is decided for: nobody known yet, a person, or a service (a valid token).
#[derive(Debug, Clone, Copy)]
enum Subject<'a> {
    Unknown,
    Person(&'a Identity<'a>),
    Service(&'a str),
}

impl<'a> Subject<'a> {
    fn of(who: Option<&'a Identity<'a>>) -> Self {
        who.map_or(Self::Unknown, Self::Person)
    }
}

impl Selector {
    /// Whether the selector can be decided without knowing who the person is.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Everyone | Self::Ip(_))
    }

    /// Whether the selector is about service tokens (decided by `service_auth` policies).
    pub fn is_service(&self) -> bool {
        matches!(self, Self::ServiceToken(_) | Self::AnyServiceToken)
    }

    fn eval(&self, req: &Request<'_>, who: Subject<'_>) -> Tri {
        match (self, who) {
            (Self::Everyone, _) | (Self::AnyServiceToken, Subject::Service(_)) => Tri::Yes,
            (Self::Ip(net), _) => Tri::from(net.contains(&req.ip)),
            (Self::ServiceToken(n), Subject::Service(s)) => Tri::from(n == s),
            // Whether a token was presented is known before any login (a person never has one),
            // and a service is not a person: selectors about people never match it.
            (Self::ServiceToken(_) | Self::AnyServiceToken, _) | (_, Subject::Service(_)) => {
                Tri::No
            }
            (_, Subject::Unknown) => Tri::Unknown,
            (Self::Email(e), Subject::Person(id)) => Tri::from(id.email == e),
            (Self::EmailDomain(d), Subject::Person(id)) => Tri::from(id.email.domain() == d),
            (Self::Group(g), Subject::Person(id)) => {
                Tri::from(id.groups.iter().any(|x| x.as_ref() == g))
            }
            (Self::LoginMethod(m), Subject::Person(id)) => Tri::from(id.login_method == *m),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Everyone => f.write_str("everyone"),
            Self::Email(e) => write!(f, "email {e}"),
            Self::EmailDomain(d) => write!(f, "email_domain {d}"),
            Self::Group(g) => write!(f, "group {g}"),
            Self::Ip(n) => write!(f, "ip {n}"),
            Self::LoginMethod(m) => write!(f, "login_method {m}"),
            Self::ServiceToken(n) => write!(f, "service_token {n}"),
            Self::AnyServiceToken => f.write_str("any_service_token"),
        }
    }
}

/// One policy of an app, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Unique within the app; shown in logs and `policy explain`.
    pub name: String,
    /// What a match does.
    pub action: Action,
    /// Normalised path prefixes; empty means every path.
    pub paths: Vec<String>,
    /// OR: at least one must match (empty on a bypass policy means everyone).
    pub include: Vec<Selector>,
    /// AND: all must match.
    pub require: Vec<Selector>,
    /// NOT: none may match.
    pub exclude: Vec<Selector>,
}

/// The facts about a request that policies look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The normalised path (no query).
    pub path: &'a str,
    /// The client address (after trusted-proxy resolution).
    pub ip: IpAddr,
}

/// Who is asking, once known.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The normalised address.
    pub email: &'a Email,
    /// The person's groups, from config users and the directory.
    pub groups: &'a [std::sync::Arc<str>],
    /// How they logged in.
    pub login_method: LoginMethod,
}

/// Three-valued truth: before a login, some selectors cannot be decided yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    /// Matches.
    Yes,
    /// Does not match.
    No,
    /// Depends on who the person is.
    Unknown,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }
}

impl Tri {
    fn or(self, other: Self) -> Self {
        match (self, other) {
            (Self::Yes, _) | (_, Self::Yes) => Self::Yes,
            (Self::No, Self::No) => Self::No,
            _ => Self::Unknown,
        }
    }
    fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::No, _) | (_, Self::No) => Self::No,
            (Self::Yes, Self::Yes) => Self::Yes,
            _ => Self::Unknown,
        }
    }
    fn not(self) -> Self {
        match self {
            Self::Yes => Self::No,
            Self::No => Self::Yes,
            Self::Unknown => Self::Unknown,
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    /// A bypass policy matched: forward without a login.
    Bypass(&'p Policy),
    /// An allow policy matched the identity: forward.
    Allow(&'p Policy),
    /// A service_auth policy matched a valid service token: forward as the service.
    ServiceAuth(&'p Policy),
    /// A block policy matched: refuse.
    Block(&'p Policy),
    /// The decision depends on who the person is: ask them to log in. Names the policy that
    /// needs the identity.
    LoginRequired(&'p Policy),
    /// No policy matched: refuse (deny by default).
    NoMatch,
}

impl Decision<'_> {
    /// Whether the request may be forwarded.
    pub fn permits(&self) -> bool {
        matches!(
            self,
            Self::Bypass(_) | Self::Allow(_) | Self::ServiceAuth(_)
        )
    }

    /// The deciding policy, if any.
    pub fn policy(&self) -> Option<&Policy> {
        match self {
            Self::Bypass(p)
            | Self::Allow(p)
            | Self::ServiceAuth(p)
            | Self::Block(p)
            | Self::LoginRequired(p) => Some(p),
            Self::NoMatch => None,
        }
    }
}

impl Policy {
    /// Whether the policy's paths cover the request path.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| prefix_covers(p, path))
    }

    /// How the policy's selectors evaluate for this request and identity.
    pub fn evaluate(&self, req: &Request<'_>, who: Option<&Identity<'_>>) -> Tri {
        self.evaluate_as(req, Subject::of(who))
    }

    fn evaluate_as(&self, req: &Request<'_>, who: Subject<'_>) -> Tri {
        let include = if self.include.is_empty() {
            // Only bypass policies may omit `include` (validated); it means everyone.
            Tri::Yes
        } else {
            self.include
                .iter()
                .fold(Tri::No, |acc, s| acc.or(s.eval(req, who)))
        };
        let require = self
            .require
            .iter()
            .fold(Tri::Yes, |acc, s| acc.and(s.eval(req, who)));
        let exclude = self
            .exclude
            .iter()
            .fold(Tri::No, |acc, s| acc.or(s.eval(req, who)));
        include.and(require).and(exclude.not())
    }
}

/// Decides a request against an app's ordered policies. `who` is `None` before a login.
pub fn decide<'p>(
    policies: &'p [Policy],
    req: &Request<'_>,
    who: Option<&Identity<'_>>,
) -> Decision<'p> {
    decide_as(policies, req, Subject::of(who))
}

/// Whether a policy with this action can decide for this subject at all: `service_auth` is
/// for services only and `allow` for people only.
fn applies(action: Action, who: Subject<'_>) -> bool {
    match action {
        Action::ServiceAuth => matches!(who, Subject::Service(_)),
        Action::Allow => !matches!(who, Subject::Service(_)),
        Action::Block | Action::Bypass => true,
    }
}

fn decide_as<'p>(policies: &'p [Policy], req: &Request<'_>, who: Subject<'_>) -> Decision<'p> {
    for p in policies {
        if !p.covers(req.path) || !applies(p.action, who) {
            continue;
        }
        match p.evaluate_as(req, who) {
            Tri::No => continue,
            Tri::Unknown => return Decision::LoginRequired(p),
            Tri::Yes => {
                return match (p.action, who) {
                    (Action::Bypass, _) => Decision::Bypass(p),
                    (Action::Block, _) => Decision::Block(p),
                    (Action::ServiceAuth, _) => Decision::ServiceAuth(p),
                    (Action::Allow, Subject::Person(_)) => Decision::Allow(p),
                    (Action::Allow, _) => Decision::LoginRequired(p),
                };
            }
        }
    }
    Decision::NoMatch
}

/// One line of `otpgate policy explain`: what a policy made of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The policy's name.
    pub policy: String,
    /// Its action.
    pub action: Action,
    /// Why it did or did not decide.
    pub verdict: String,
}

/// Walks the policies like [`decide`] and says, for each one looked at, why it did or did not
/// decide. The last step is the deciding one (if any policy decided).
pub fn explain<'p>(
    policies: &'p [Policy],
    req: &Request<'_>,
    who: Option<&Identity<'_>>,
) -> (Decision<'p>, Vec<Step>) {
    explain_as(policies, req, Subject::of(who))
}

fn explain_as<'p>(
    policies: &'p [Policy],
    req: &Request<'_>,
    who: Subject<'_>,
) -> (Decision<'p>, Vec<Step>) {
    let mut steps = Vec::new();
    for p in policies {
        let verdict = if !applies(p.action, who) {
            match p.action {
                Action::ServiceAuth => "skipped: service_auth policies decide service tokens only",
                _ => "skipped: allow policies decide people only",
            }
            .to_owned()
        } else if !p.covers(req.path) {
            format!(
                "skipped: path {} is not under {}",
                req.path,
                p.paths.join(", ")
            )
        } else {
            let detail = |list: &[Selector]| -> String {
                list.iter()
                    .map(|s| {
                        let v = match s.eval(req, who) {
                            Tri::Yes => "yes",
                            Tri::No => "no",
                            Tri::Unknown => "unknown before login",
                        };
                        format!("{s}: {v}")
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let mut parts = Vec::new();
            if !p.include.is_empty() {
                parts.push(format!("include [{}]", detail(&p.include)));
            }
            if !p.require.is_empty() {
                parts.push(format!("require [{}]", detail(&p.require)));
            }
            if !p.exclude.is_empty() {
                parts.push(format!("exclude [{}]", detail(&p.exclude)));
            }
            let outcome = match p.evaluate_as(req, who) {
                Tri::Yes => "matches",
                Tri::No => "does not match",
                Tri::Unknown => "needs a login to decide",
            };
            if parts.is_empty() {
                outcome.to_owned()
            } else {
                format!("{outcome}: {}", parts.join(", "))
            }
        };
        steps.push(Step {
            policy: p.name.clone(),
            action: p.action,
            verdict,
        });
        let d = decide_as(std::slice::from_ref(p), req, who);
        if d != Decision::NoMatch {
            return (d, steps);
        }
    }
    (Decision::NoMatch, steps)
}

/// Whether some request could ever be let through by these policies (used for the
/// `check-config` warning "no policy of app X can ever allow anyone", the pitfall where one
/// "block everyone" policy silently stops every login).
pub fn can_allow_anyone(policies: &[Policy]) -> bool {
    for (i, p) in policies.iter().enumerate() {
        if !matches!(
            p.action,
            Action::Allow | Action::Bypass | Action::ServiceAuth
        ) || !satisfiable(p)
        {
            continue;
        }
        let shadowed = policies[..i].iter().any(|q| {
            q.action == Action::Block
                && q.include.contains(&Selector::Everyone)
                && q.require.is_empty()
                && q.exclude.is_empty()
                && (q.paths.is_empty()
                    || (!p.paths.is_empty() && p.paths.iter().all(|pp| q.covers(pp))))
        });
        if !shadowed {
            return true;
        }
    }
    false
}

/// Whether some identity and address could satisfy all of a policy's selectors at once.
fn satisfiable(p: &Policy) -> bool {
    if p.exclude.contains(&Selector::Everyone) {
        return false;
    }
    // Every `require` entry must hold together, and none may be excluded outright.
    let mut email: Option<&Email> = None;
    let mut domain: Option<&str> = None;
    let mut method: Option<LoginMethod> = None;
    for s in &p.require {
        if p.exclude.contains(s) {
            return false;
        }
        match s {
            Selector::Email(e) => {
                if email.is_some_and(|x| x != e) {
                    return false;
                }
                email = Some(e);
            }
            Selector::EmailDomain(d) => {
                if domain.is_some_and(|x| x != d) {
                    return false;
                }
                domain = Some(d);
            }
            Selector::LoginMethod(m) => {
                if method.is_some_and(|x| x != *m) {
                    return false;
                }
                method = Some(*m);
            }
            Selector::Everyone
            | Selector::Group(_)
            | Selector::Ip(_)
            | Selector::ServiceToken(_)
            | Selector::AnyServiceToken => {}
        }
    }
    if let (Some(e), Some(d)) = (email, domain)
        && e.domain() != d
    {
        return false;
    }
    if let Some(e) = email
        && p.exclude
            .iter()
            .any(|s| matches!(s, Selector::EmailDomain(d) if d == e.domain()))
    {
        return false;
    }
    // `include` needs one entry that is not excluded outright.
    p.include.is_empty() || p.include.iter().any(|s| !p.exclude.contains(s))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod service_tests;
