//! Directory entries → a [`DirectorySnapshot`]: which attribute is the id and which the
//! temporary-authentication address, who is in which group, and which entries are skipped
//! because the gateway would reject them. Pure, so every rule is unit-tested without a server.
//!
//! Rules (documented in the README):
//! - An entry is taken whole or not at all; a skipped entry is reported with its DN and reason.
//! - The id is the first value of `users.id`. An id with an `@` must be an address the login
//!   page accepts (it is lower-cased); any other id is a name (no spaces or control
//!   characters) and then needs a valid `temp_auth_email`, or nothing could ever reach the user.
//! - `temp_auth_email`, when the attribute is configured and present, must be a valid address.
//! - The first entry (in DN order) with an id wins; later entries with the same id are skipped.
//! - Groups: an entry of the groups search names its members' DNs in `groups.member`; a user's
//!   `users.member_of` values name its groups' DNs. With a groups search, both are resolved
//!   through it (groups outside it do not count); without one, a `memberOf` DN's group name is
//!   its first RDN value (`CN=Engineering,OU=Groups,...` → `Engineering`). Nested groups are not
//!   expanded. A group name with a comma or a control character is skipped and reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::config::validate_group_name;
use crate::config::{DirectoryConfig, DirectoryGroups, DirectoryUsers};
use crate::dn;
use crate::email::Email;
use crate::users::{DirectorySnapshot, DirectoryUser};

/// One directory entry as read: its DN and its text attributes (names lower-cased).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry's DN.
    pub dn: String,
    attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    /// An entry; attribute names are matched case-insensitively, as LDAP does.
    pub fn new<N: AsRef<str>>(
        dn: impl Into<String>,
        attrs: impl IntoIterator<Item = (N, Vec<String>)>,
    ) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (name, values) in attrs {
            map.entry(name.as_ref().to_ascii_lowercase())
                .or_default()
                .extend(values);
        }
        Self {
            dn: dn.into(),
            attrs: map,
        }
    }

    /// Every value of `name`.
    pub fn values(&self, name: &str) -> &[String] {
        self.attrs
            .get(&name.to_ascii_lowercase())
            .map_or(&[][..], Vec::as_slice)
    }

    /// The first non-blank value of `name`, trimmed.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.values(name)
            .iter()
            .map(|v| v.trim())
            .find(|v| !v.is_empty())
    }
}

/// Why an entry was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The entry's DN (or a group's) could not be read.
    InvalidDn,
    /// No value in the id attribute.
    MissingId,
    /// The id is neither an address nor a usable name.
    InvalidId,
    /// The id or `temp_auth_email` is an address the gateway would reject.
    InvalidAddress,
    /// A name id without a `temp_auth_email`: nothing could be mailed to the user.
    NoAddress,
    /// Another entry has the same id.
    DuplicateId,
    /// A group without a name, or with one that cannot travel in `X-Otpgate-Groups`.
    InvalidGroup,
}

impl SkipReason {
    /// Every reason, for metrics.
    pub const ALL: [Self; 7] = [
        Self::InvalidDn,
        Self::MissingId,
        Self::InvalidId,
        Self::InvalidAddress,
        Self::NoAddress,
        Self::DuplicateId,
        Self::InvalidGroup,
    ];

    /// The metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidDn => "invalid_dn",
            Self::MissingId => "missing_id",
            Self::InvalidId => "invalid_id",
            Self::InvalidAddress => "invalid_address",
            Self::NoAddress => "no_address",
            Self::DuplicateId => "duplicate_id",
            Self::InvalidGroup => "invalid_group",
        }
    }
}

/// An entry left out of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's DN.
    pub dn: String,
    /// Why.
    pub reason: SkipReason,
    /// The details, for the log line (the offending value, never a password: none is read).
    pub detail: String,
}

/// A snapshot and what was left out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The users.
    pub snapshot: DirectorySnapshot,
    /// Entries skipped, in the order met.
    pub skipped: Vec<Skipped>,
}

/// Why one entry is left out, and the detail for the log line.
type Refusal = (SkipReason, String);

impl Skipped {
    fn of(entry: &Entry, (reason, detail): Refusal) -> Self {
        Self {
            dn: entry.dn.clone(),
            reason,
            detail,
        }
    }
}

/// Turns the entries of the users and groups searches into a snapshot.
pub fn build(cfg: &DirectoryConfig, users: &[Entry], groups: &[Entry], synced_ms: u64) -> Built {
    let mut skipped = Vec::new();
    // Groups first: the users' memberships are resolved through them.
    let groups = cfg
        .groups
        .as_ref()
        .map(|gc| read_groups(gc, groups, &mut skipped));
    let ordered = in_dn_order(users, &mut skipped);
    let users = read_users(cfg, &ordered, groups.as_ref(), &mut skipped);
    Built {
        snapshot: DirectorySnapshot {
            fingerprint: cfg.fingerprint(),
            synced_ms,
            users,
        },
        skipped,
    }
}

/// What the groups search says, keyed by normalised DN.
#[derive(Default)]
struct GroupSearch {
    /// Group DN → name, for the users' `memberOf` values.
    names: HashMap<String, String>,
    /// Member DN → the names of the groups listing it.
    members: HashMap<String, BTreeSet<String>>,
}

/// The groups search, OpenLDAP style: each group lists its members' DNs.
fn read_groups(gc: &DirectoryGroups, entries: &[Entry], skipped: &mut Vec<Skipped>) -> GroupSearch {
    let mut out = GroupSearch::default();
    for g in entries {
        let (gdn, name) = match read_group(gc, g) {
            Ok(group) => group,
            Err(refusal) => {
                skipped.push(Skipped::of(g, refusal));
                continue;
            }
        };
        for m in g.values(&gc.member) {
            // Members the users search does not return (other bases, nested groups) are
            // simply not matched.
            if let Ok(mdn) = dn::normalise(m) {
                out.members.entry(mdn).or_default().insert(name.clone());
            }
        }
        out.names.insert(gdn, name);
    }
    out
}

/// One group's normalised DN and name.
fn read_group(gc: &DirectoryGroups, g: &Entry) -> Result<(String, String), Refusal> {
    let gdn = dn::normalise(&g.dn).map_err(|_| (SkipReason::InvalidDn, "group DN".to_owned()))?;
    let raw = g.first(&gc.name).ok_or_else(|| {
        (
            SkipReason::InvalidGroup,
            format!("no {} attribute", gc.name),
        )
    })?;
    let name = validate_group_name(raw).map_err(|e| (SkipReason::InvalidGroup, e))?;
    Ok((gdn, name))
}

/// The users with a readable DN, by normalised DN, so that "the first entry wins" does not
/// depend on the order the server answers in.
fn in_dn_order<'a>(users: &'a [Entry], skipped: &mut Vec<Skipped>) -> Vec<(String, &'a Entry)> {
    let mut ordered: Vec<(String, &Entry)> = Vec::with_capacity(users.len());
    for u in users {
        match dn::normalise(&u.dn) {
            Ok(n) => ordered.push((n, u)),
            Err(e) => skipped.push(Skipped::of(u, (SkipReason::InvalidDn, e.to_string()))),
        }
    }
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    ordered
}

/// The users in id order, from entries in DN order; the first entry with an id wins.
fn read_users(
    cfg: &DirectoryConfig,
    ordered: &[(String, &Entry)],
    groups: Option<&GroupSearch>,
    skipped: &mut Vec<Skipped>,
) -> Vec<DirectoryUser> {
    let mut out: BTreeMap<String, DirectoryUser> = BTreeMap::new();
    let mut seen_dns: HashSet<&str> = HashSet::new();
    for (ndn, u) in ordered {
        if !seen_dns.insert(ndn) {
            // The same entry twice (overlapping paged answers): not a conflict.
            continue;
        }
        let (id, temp_auth_email) = match read_user(&cfg.users, u) {
            Ok(user) => user,
            Err(refusal) => {
                skipped.push(Skipped::of(u, refusal));
                continue;
            }
        };
        if let Some(first) = out.get(&id) {
            let detail = format!("id {id:?} belongs to {} already", first.dn);
            skipped.push(Skipped::of(u, (SkipReason::DuplicateId, detail)));
            continue;
        }
        let user = DirectoryUser {
            id: id.clone(),
            dn: u.dn.clone(),
            temp_auth_email,
            groups: memberships(cfg.users.member_of.as_deref(), groups, ndn, u),
        };
        out.insert(id, user);
    }
    out.into_values().collect()
}

/// One user's id and temporary-authentication address.
fn read_user(uc: &DirectoryUsers, u: &Entry) -> Result<(String, Option<Email>), Refusal> {
    let (id, id_is_address) = read_id(uc, u)?;
    let temp_auth_email = read_temp_auth_email(uc, u)?;
    if !id_is_address && temp_auth_email.is_none() {
        let attr = uc.temp_auth_email.as_deref().unwrap_or("temp_auth_email");
        return Err((
            SkipReason::NoAddress,
            format!("id {id:?} is not an address and there is no {attr}"),
        ));
    }
    Ok((id, temp_auth_email))
}

/// The id, and whether it is an address (lower-cased) rather than a name.
fn read_id(uc: &DirectoryUsers, u: &Entry) -> Result<(String, bool), Refusal> {
    let Some(raw) = u.first(&uc.id) else {
        return Err((SkipReason::MissingId, format!("no {} attribute", uc.id)));
    };
    if raw.contains('@') {
        return match Email::parse(raw) {
            Ok(e) => Ok((e.to_string(), true)),
            Err(e) => Err((
                SkipReason::InvalidAddress,
                format!("{}: {raw:?}: {e}", uc.id),
            )),
        };
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            SkipReason::InvalidId,
            format!(
                "{}: {raw:?} is neither an address nor a name without spaces",
                uc.id
            ),
        ));
    }
    Ok((raw.to_owned(), false))
}

/// `temp_auth_email`, when the attribute is configured and the entry has it.
fn read_temp_auth_email(uc: &DirectoryUsers, u: &Entry) -> Result<Option<Email>, Refusal> {
    let Some(attr) = uc.temp_auth_email.as_deref() else {
        return Ok(None);
    };
    let Some(v) = u.first(attr) else {
        return Ok(None);
    };
    match Email::parse(v) {
        Ok(e) => Ok(Some(e)),
        Err(e) => Err((SkipReason::InvalidAddress, format!("{attr}: {v:?}: {e}"))),
    }
}

/// A user's group names, sorted and once each: the groups listing the user as a member
/// (OpenLDAP `groupOfNames`) merged with those its `memberOf` names (Active Directory).
fn memberships(
    member_of: Option<&str>,
    groups: Option<&GroupSearch>,
    ndn: &str,
    u: &Entry,
) -> Vec<String> {
    let mut names: BTreeSet<String> = groups
        .and_then(|gs| gs.members.get(ndn))
        .cloned()
        .unwrap_or_default();
    if let Some(attr) = member_of {
        names.extend(
            u.values(attr)
                .iter()
                .filter_map(|g| member_of_group(groups, g)),
        );
    }
    names.into_iter().collect()
}

/// The group a `memberOf` DN names: with a groups search, only a group it found (by DN);
/// without one, the DN's first RDN value.
fn member_of_group(groups: Option<&GroupSearch>, group_dn: &str) -> Option<String> {
    match groups {
        Some(gs) => dn::normalise(group_dn)
            .ok()
            .and_then(|n| gs.names.get(&n).cloned()),
        None => dn::first_value(group_dn).and_then(|v| validate_group_name(&v).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DirectoryGroups, DirectoryUsers};
    use std::time::Duration;

    fn cfg(groups: bool, temp: Option<&str>, member_of: Option<&str>) -> DirectoryConfig {
        DirectoryConfig {
            url: "ldap://127.0.0.1:389".into(),
            starttls: false,
            bind_dn: None,
            bind_password: None,
            ca: vec![],
            users: DirectoryUsers {
                base: "ou=people,dc=example,dc=org".into(),
                filter: "(objectClass=inetOrgPerson)".into(),
                id: "mail".into(),
                temp_auth_email: temp.map(Into::into),
                member_of: member_of.map(Into::into),
            },
            groups: groups.then(|| DirectoryGroups {
                base: "ou=groups,dc=example,dc=org".into(),
                filter: "(objectClass=groupOfNames)".into(),
                name: "cn".into(),
                member: "member".into(),
            }),
            refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            page_size: 100,
        }
    }

    fn person(uid: &str, attrs: &[(&str, &str)]) -> Entry {
        let mut map: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in attrs {
            map.push(((*k).to_owned(), vec![(*v).to_owned()]));
        }
        Entry::new(format!("uid={uid},ou=people,dc=example,dc=org"), map)
    }

    fn group(cn: &str, members: &[&str]) -> Entry {
        Entry::new(
            format!("cn={cn},ou=groups,dc=example,dc=org"),
            [
                ("cn", vec![cn.to_owned()]),
                (
                    "member",
                    members
                        .iter()
                        .map(|m| format!("UID={m}, OU=People,DC=example,DC=org"))
                        .collect(),
                ),
            ],
        )
    }

    #[test]
    fn users_and_group_of_names_members() {
        let c = cfg(true, Some("otherMailbox"), None);
        let users = [
            person(
                "alice",
                &[
                    ("mail", "Alice@Example.org"),
                    ("othermailbox", "alice@home.example"),
                ],
            ),
            person("bob", &[("MAIL", "bob@example.org")]),
        ];
        let groups = [
            group("admins", &["alice"]),
            group("staff", &["alice", "bob", "nobody"]),
        ];
        let b = build(&c, &users, &groups, 42);
        assert!(b.skipped.is_empty(), "{:?}", b.skipped);
        assert_eq!(b.snapshot.synced_ms, 42);
        assert_eq!(b.snapshot.fingerprint, c.fingerprint());
        let u = &b.snapshot.users;
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].id, "alice@example.org", "lower-cased");
        assert_eq!(
            u[0].temp_auth_email.as_ref().map(Email::as_str),
            Some("alice@home.example")
        );
        assert_eq!(u[0].groups, ["admins", "staff"]);
        assert_eq!(u[1].id, "bob@example.org");
        assert_eq!(u[1].temp_auth_email, None, "falls back to the id later");
        assert_eq!(u[1].groups, ["staff"]);
    }

    #[test]
    fn member_of_without_a_groups_search_uses_the_first_rdn() {
        let c = cfg(false, None, Some("memberOf"));
        let u = Entry::new(
            "CN=Alice,OU=Staff,DC=corp,DC=example",
            [
                ("mail", vec!["alice@corp.example".to_owned()]),
                (
                    "memberOf",
                    vec![
                        "CN=Engineering,OU=Groups,DC=corp,DC=example".to_owned(),
                        r"CN=Sales\, EMEA,OU=Groups,DC=corp,DC=example".to_owned(),
                    ],
                ),
            ],
        );
        let b = build(&c, &[u], &[], 1);
        assert_eq!(
            b.snapshot.users[0].groups,
            ["Engineering"],
            "a name with a comma cannot be a group name"
        );
    }

    #[test]
    fn member_of_with_a_groups_search_counts_only_its_groups() {
        let c = cfg(true, None, Some("memberOf"));
        let mut u = person("alice", &[("mail", "alice@example.org")]);
        u.attrs.insert(
            "memberof".into(),
            vec![
                "CN=Admins,OU=Groups,DC=example,DC=org".into(),
                "cn=elsewhere,ou=other,dc=example,dc=org".into(),
            ],
        );
        let b = build(&c, &[u], &[group("admins", &[])], 1);
        assert_eq!(b.snapshot.users[0].groups, ["admins"]);
    }

    #[test]
    fn entries_the_gateway_would_reject_are_skipped_and_reported() {
        let c = cfg(true, Some("otherMailbox"), None);
        let users = [
            person("nomail", &[("cn", "No Mail")]),
            person("bad", &[("mail", "bad@@example.org")]),
            person("unicode", &[("mail", "jürgen@example.org")]),
            person(
                "badtemp",
                &[
                    ("mail", "t@example.org"),
                    ("otherMailbox", "not an address"),
                ],
            ),
            person("spaces", &[("mail", "has spaces")]),
            person("dupe1", &[("mail", "same@example.org")]),
            person("dupe2", &[("mail", "SAME@example.org")]),
            person("ok", &[("mail", "ok@example.org")]),
        ];
        let groups = [
            Entry::new("cn=x,ou=groups,dc=example,dc=org", [("member", vec![])]),
            Entry::new(
                r"cn=a\,b,ou=groups,dc=example,dc=org",
                [("cn", vec!["a,b".to_owned()])],
            ),
            Entry::new("not a dn", [("cn", vec!["n".to_owned()])]),
        ];
        let b = build(&c, &users, &groups, 1);
        let ids: Vec<&str> = b.snapshot.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["ok@example.org", "same@example.org"]);
        let same = &b.snapshot.users[1];
        assert!(same.dn.starts_with("uid=dupe1"), "the first DN wins");
        let reasons: Vec<(SkipReason, &str)> = b
            .skipped
            .iter()
            .map(|s| (s.reason, s.dn.split(',').next().unwrap_or("")))
            .collect();
        for want in [
            (SkipReason::InvalidGroup, "cn=x"),
            (SkipReason::InvalidGroup, r"cn=a\"),
            (SkipReason::InvalidDn, "not a dn"),
            (SkipReason::MissingId, "uid=nomail"),
            (SkipReason::InvalidAddress, "uid=bad"),
            (SkipReason::InvalidAddress, "uid=unicode"),
            (SkipReason::InvalidAddress, "uid=badtemp"),
            (SkipReason::InvalidId, "uid=spaces"),
            (SkipReason::DuplicateId, "uid=dupe2"),
        ] {
            assert!(reasons.contains(&want), "{want:?} in {reasons:?}");
        }
        assert_eq!(b.skipped.len(), 9, "{:?}", b.skipped);
    }

    #[test]
    fn name_ids_need_a_temp_auth_email() {
        let mut c = cfg(false, Some("mail"), None);
        c.users.id = "uid".into();
        let users = [
            person("alice", &[("uid", "alice"), ("mail", "alice@example.org")]),
            person("bob", &[("uid", "bob")]),
        ];
        let b = build(&c, &users, &[], 1);
        assert_eq!(b.snapshot.users.len(), 1);
        assert_eq!(b.snapshot.users[0].id, "alice");
        assert_eq!(
            b.snapshot.users[0]
                .temp_auth_email
                .as_ref()
                .map(Email::as_str),
            Some("alice@example.org")
        );
        assert_eq!(b.skipped.len(), 1);
        assert_eq!(b.skipped[0].reason, SkipReason::NoAddress);
    }
}
