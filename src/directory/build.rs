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

use crate::config::DirectoryConfig;
use crate::config::validate_group_name;
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

/// Turns the entries of the users and groups searches into a snapshot.
pub fn build(cfg: &DirectoryConfig, users: &[Entry], groups: &[Entry], synced_ms: u64) -> Built {
    let mut skipped = Vec::new();
    let mut skip = |dn: &str, reason: SkipReason, detail: String| {
        skipped.push(Skipped {
            dn: dn.to_owned(),
            reason,
            detail,
        });
    };

    // Groups: normalised group DN → name, and normalised member DN → names.
    let mut group_names: HashMap<String, String> = HashMap::new();
    let mut members: HashMap<String, BTreeSet<String>> = HashMap::new();
    if let Some(gc) = &cfg.groups {
        for g in groups {
            let Ok(gdn) = dn::normalise(&g.dn) else {
                skip(&g.dn, SkipReason::InvalidDn, "group DN".into());
                continue;
            };
            let Some(raw) = g.first(&gc.name) else {
                skip(
                    &g.dn,
                    SkipReason::InvalidGroup,
                    format!("no {} attribute", gc.name),
                );
                continue;
            };
            let name = match validate_group_name(raw) {
                Ok(n) => n,
                Err(e) => {
                    skip(&g.dn, SkipReason::InvalidGroup, e);
                    continue;
                }
            };
            for m in g.values(&gc.member) {
                // Members the users search does not return (other bases, nested groups) are
                // simply not matched.
                if let Ok(mdn) = dn::normalise(m) {
                    members.entry(mdn).or_default().insert(name.clone());
                }
            }
            group_names.insert(gdn, name);
        }
    }

    // Users, in DN order so that "the first entry wins" does not depend on the server.
    let mut ordered: Vec<(String, &Entry)> = Vec::with_capacity(users.len());
    for u in users {
        match dn::normalise(&u.dn) {
            Ok(n) => ordered.push((n, u)),
            Err(e) => skip(&u.dn, SkipReason::InvalidDn, e.to_string()),
        }
    }
    ordered.sort_by(|a, b| a.0.cmp(&b.0));

    let mut taken: HashMap<String, String> = HashMap::new();
    let mut out: BTreeMap<String, DirectoryUser> = BTreeMap::new();
    let mut seen_dns: HashSet<String> = HashSet::new();
    for (ndn, u) in ordered {
        if !seen_dns.insert(ndn.clone()) {
            // The same entry twice (overlapping paged answers): not a conflict.
            continue;
        }
        let Some(raw_id) = u.first(&cfg.users.id) else {
            skip(
                &u.dn,
                SkipReason::MissingId,
                format!("no {} attribute", cfg.users.id),
            );
            continue;
        };
        let id_is_address = raw_id.contains('@');
        let id = if id_is_address {
            match Email::parse(raw_id) {
                Ok(e) => e.to_string(),
                Err(e) => {
                    skip(
                        &u.dn,
                        SkipReason::InvalidAddress,
                        format!("{}: {raw_id:?}: {e}", cfg.users.id),
                    );
                    continue;
                }
            }
        } else if raw_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            skip(
                &u.dn,
                SkipReason::InvalidId,
                format!(
                    "{}: {raw_id:?} is neither an address nor a name without spaces",
                    cfg.users.id
                ),
            );
            continue;
        } else {
            raw_id.to_owned()
        };
        let temp_auth_email = match cfg.users.temp_auth_email.as_deref() {
            None => None,
            Some(attr) => match u.first(attr) {
                None => None,
                Some(v) => match Email::parse(v) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        skip(
                            &u.dn,
                            SkipReason::InvalidAddress,
                            format!("{attr}: {v:?}: {e}"),
                        );
                        continue;
                    }
                },
            },
        };
        if !id_is_address && temp_auth_email.is_none() {
            skip(
                &u.dn,
                SkipReason::NoAddress,
                format!(
                    "id {id:?} is not an address and there is no {}",
                    cfg.users
                        .temp_auth_email
                        .as_deref()
                        .unwrap_or("temp_auth_email")
                ),
            );
            continue;
        }
        if let Some(first) = taken.get(&id) {
            skip(
                &u.dn,
                SkipReason::DuplicateId,
                format!("id {id:?} belongs to {first} already"),
            );
            continue;
        }
        let mut groups: BTreeSet<String> = members.get(&ndn).cloned().unwrap_or_default();
        if let Some(attr) = cfg.users.member_of.as_deref() {
            for g in u.values(attr) {
                let name = if cfg.groups.is_some() {
                    dn::normalise(g)
                        .ok()
                        .and_then(|n| group_names.get(&n).cloned())
                } else {
                    dn::first_value(g).and_then(|v| validate_group_name(&v).ok())
                };
                if let Some(n) = name {
                    groups.insert(n);
                }
            }
        }
        taken.insert(id.clone(), u.dn.clone());
        out.insert(
            id.clone(),
            DirectoryUser {
                id,
                dn: u.dn.clone(),
                temp_auth_email,
                groups: groups.into_iter().collect(),
            },
        );
    }
    Built {
        snapshot: DirectorySnapshot {
            fingerprint: cfg.fingerprint(),
            synced_ms,
            users: out.into_values().collect(),
        },
        skipped,
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
