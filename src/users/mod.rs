//! The user table: hosted users from the config and users synced from a directory (Zscaler's
//! users "hosted by the service or synchronized from a directory server"), merged into one
//! table. Looked up by normalised address on every authenticated request and before a code is
//! mailed, so group changes apply on the next request.
//!
//! Merge rule: a config user and a directory user with the same id are one user: the union of
//! their groups (the config's first, in config order), and the config's `temp_auth_email` when
//! it sets one, else the directory's. Ids are compared exactly; ids that are addresses were
//! lower-cased when they were read. A user logs in with the id when the id is a valid address.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::config::UserConfig;
use crate::email::Email;

mod table;
pub use table::UserTable;

/// Where a user comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Hosted in the config file (`users`).
    Config,
    /// Synced from the directory.
    Directory,
    /// In both; merged (see the module documentation).
    Both,
}

impl Source {
    /// `config`, `directory` or `config+directory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Directory => "directory",
            Self::Both => "config+directory",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One user.
#[derive(Debug)]
pub struct User {
    /// The user id.
    pub id: String,
    /// Where one-time links and temporary passwords go.
    pub temp_auth_email: Option<Email>,
    /// Group memberships.
    pub groups: Vec<Arc<str>>,
    /// `X-Otpgate-Groups`, prepared once.
    pub groups_header: HeaderValue,
    /// `X-Otpgate-User`, prepared once; `None` when the id is no valid header value (the
    /// address is sent instead).
    pub id_header: Option<HeaderValue>,
    /// Config, directory, or both.
    pub source: Source,
}

impl User {
    /// The address one-time links and temporary passwords are mailed to: `temp_auth_email`,
    /// else the id when it is an address (docs/product.md#s5), else none.
    pub fn mail_to(&self) -> Option<Email> {
        self.temp_auth_email
            .clone()
            .or_else(|| Email::parse(&self.id).ok())
    }

    /// The address the user logs in with: the id, when it is an address.
    pub fn login_email(&self) -> Option<Email> {
        Email::parse(&self.id).ok()
    }
}

/// A user as read from the directory (validated by the sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The user id (from `directory.users.id`): a normalised address or a name.
    pub id: String,
    /// The entry's DN, as the directory wrote it.
    pub dn: String,
    /// From `directory.users.temp_auth_email`, when set and present.
    pub temp_auth_email: Option<Email>,
    /// Group names, sorted.
    pub groups: Vec<String>,
}

/// The users of one successful directory sync; persisted so that a restart while the
/// directory is unreachable still knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySnapshot {
    /// [`crate::config::DirectoryConfig::fingerprint`] of the settings it was taken with.
    pub fingerprint: String,
    /// When the sync finished (Unix ms).
    pub synced_ms: u64,
    /// The users, sorted by id.
    pub users: Vec<DirectoryUser>,
}

impl DirectorySnapshot {
    /// How many distinct groups the users are in.
    pub fn group_count(&self) -> usize {
        let mut all: Vec<&str> = self
            .users
            .iter()
            .flat_map(|u| u.groups.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// Users by id and by the addresses they log in with.
#[derive(Debug, Default)]
pub struct Users {
    by_email: HashMap<String, Arc<User>>,
    by_id: HashMap<String, Arc<User>>,
    sorted: Vec<Arc<User>>,
}

struct Draft {
    temp_auth_email: Option<Email>,
    groups: Vec<String>,
    source: Source,
}

impl Users {
    /// The table of the config's hosted users alone.
    pub fn from_config(users: &[UserConfig]) -> Self {
        Self::merged(users, None)
    }

    /// The config's hosted users merged with a directory snapshot (see the module
    /// documentation for the rule).
    pub fn merged(config: &[UserConfig], directory: Option<&DirectorySnapshot>) -> Self {
        let mut drafts: BTreeMap<String, Draft> = BTreeMap::new();
        for u in config {
            drafts.insert(
                u.id.clone(),
                Draft {
                    temp_auth_email: u.temp_auth_email.clone(),
                    groups: u.groups.clone(),
                    source: Source::Config,
                },
            );
        }
        for u in directory.map_or(&[][..], |d| &d.users[..]) {
            match drafts.get_mut(&u.id) {
                Some(d) => {
                    d.source = Source::Both;
                    if d.temp_auth_email.is_none() {
                        d.temp_auth_email.clone_from(&u.temp_auth_email);
                    }
                    for g in &u.groups {
                        if !d.groups.contains(g) {
                            d.groups.push(g.clone());
                        }
                    }
                }
                None => {
                    drafts.insert(
                        u.id.clone(),
                        Draft {
                            temp_auth_email: u.temp_auth_email.clone(),
                            groups: u.groups.clone(),
                            source: Source::Directory,
                        },
                    );
                }
            }
        }
        let mut t = Self::default();
        for (id, d) in drafts {
            // Group names carry no commas or control characters (validated); non-ASCII names
            // travel as UTF-8 bytes.
            let header = HeaderValue::from_bytes(d.groups.join(",").as_bytes())
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            let user = Arc::new(User {
                id_header: HeaderValue::from_str(&id).ok(),
                id: id.clone(),
                temp_auth_email: d.temp_auth_email,
                groups: d.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                groups_header: header,
                source: d.source,
            });
            if Email::parse(&id).is_ok() {
                t.by_email.insert(id.clone(), user.clone());
            }
            t.by_id.insert(id, user.clone());
            t.sorted.push(user);
        }
        t
    }

    /// The user who logs in as `email`.
    pub fn by_email(&self, email: &str) -> Option<&Arc<User>> {
        self.by_email.get(email)
    }

    /// The user with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<User>> {
        self.by_id.get(id)
    }

    /// The members of `group`, sorted by id.
    pub fn in_group(&self, group: &str) -> Vec<Arc<User>> {
        self.sorted
            .iter()
            .filter(|u| u.groups.iter().any(|g| g.as_ref() == group))
            .cloned()
            .collect()
    }

    /// Every user, sorted by id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<User>> {
        self.sorted.iter()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    fn config_user(id: &str, temp: Option<&str>, groups: &[&str]) -> UserConfig {
        UserConfig {
            id: id.into(),
            temp_auth_email: temp.map(email),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn dir_user(id: &str, temp: Option<&str>, groups: &[&str]) -> DirectoryUser {
        DirectoryUser {
            id: id.into(),
            dn: format!("uid={id},ou=people,dc=example,dc=org"),
            temp_auth_email: temp.map(email),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn snapshot(users: Vec<DirectoryUser>) -> DirectorySnapshot {
        DirectorySnapshot {
            fingerprint: "f".into(),
            synced_ms: 1,
            users,
        }
    }

    #[test]
    fn config_and_directory_users_merge_by_id() {
        let config = [
            config_user("alice@corp.example", None, &["engineering"]),
            config_user("carol@corp.example", Some("carol@home.example"), &["ops"]),
            config_user("dave", Some("dave@home.example"), &[]),
        ];
        let dir = snapshot(vec![
            dir_user(
                "alice@corp.example",
                Some("alice@home.example"),
                &["admins", "engineering"],
            ),
            dir_user("bob@corp.example", None, &["admins"]),
            dir_user("carol@corp.example", Some("carol@dir.example"), &[]),
        ]);
        let t = Users::merged(&config, Some(&dir));
        let ids: Vec<&str> = t.all().map(|u| u.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "alice@corp.example",
                "bob@corp.example",
                "carol@corp.example",
                "dave"
            ]
        );

        let alice = t.by_email("alice@corp.example").unwrap();
        assert_eq!(alice.source, Source::Both);
        let groups: Vec<&str> = alice.groups.iter().map(AsRef::as_ref).collect();
        assert_eq!(groups, ["engineering", "admins"], "union, config first");
        assert_eq!(alice.groups_header, "engineering,admins");
        assert_eq!(alice.id_header.as_ref().unwrap(), "alice@corp.example");
        assert_eq!(t.by_id("dave").unwrap().id_header.as_ref().unwrap(), "dave");
        assert_eq!(
            alice.temp_auth_email,
            Some(email("alice@home.example")),
            "the directory's when the config sets none"
        );

        let carol = t.by_id("carol@corp.example").unwrap();
        assert_eq!(
            carol.temp_auth_email,
            Some(email("carol@home.example")),
            "the config's wins"
        );
        assert_eq!(
            t.by_id("bob@corp.example").unwrap().source,
            Source::Directory
        );
        assert_eq!(t.by_id("dave").unwrap().source, Source::Config);
        assert!(
            t.by_email("dave").is_none(),
            "a name id is not a login address"
        );

        let admins: Vec<String> = t.in_group("admins").iter().map(|u| u.id.clone()).collect();
        assert_eq!(admins, ["alice@corp.example", "bob@corp.example"]);
        assert!(t.in_group("nobody").is_empty());
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn mail_goes_to_temp_auth_email_else_the_id() {
        let t = Users::merged(
            &[
                config_user("dave", Some("dave@home.example"), &[]),
                config_user("erin", None, &[]),
            ],
            Some(&snapshot(vec![dir_user("bob@corp.example", None, &[])])),
        );
        assert_eq!(
            t.by_id("bob@corp.example").unwrap().mail_to(),
            Some(email("bob@corp.example"))
        );
        assert_eq!(
            t.by_id("dave").unwrap().mail_to(),
            Some(email("dave@home.example"))
        );
        assert_eq!(t.by_id("erin").unwrap().mail_to(), None);
        assert_eq!(t.by_id("dave").unwrap().login_email(), None);
    }

    #[test]
    fn non_ascii_group_names_reach_the_header() {
        let t = Users::from_config(&[config_user("a@b.example", None, &["Ingeniería", "ops"])]);
        let u = t.by_email("a@b.example").unwrap();
        assert_eq!(u.groups_header.as_bytes(), "Ingeniería,ops".as_bytes());
    }

    /// An id that is no valid header value has no header of its own: the address goes in its
    /// place, as it always did.
    #[test]
    fn an_id_that_is_no_header_value_has_none() {
        let t = Users::from_config(&[config_user("bad\nid", None, &[])]);
        assert!(t.by_id("bad\nid").unwrap().id_header.is_none());
    }

    #[test]
    fn snapshot_counts_distinct_groups() {
        let s = snapshot(vec![
            dir_user("a@x.example", None, &["g1", "g2"]),
            dir_user("b@x.example", None, &["g2"]),
        ]);
        assert_eq!(s.group_count(), 2);
    }
}
