//! The settings of the LDAP / Active Directory sync (`directory`).

use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::Secret;

/// LDAP / Active Directory sync settings (`directory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// `ldap://host[:389]` or `ldaps://host[:636]`, as written (validated).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    pub starttls: bool,
    /// The DN to bind as; `None` binds anonymously.
    pub bind_dn: Option<String>,
    /// The bind password (read from `bind_password_file` at load time).
    pub bind_password: Option<Secret>,
    /// Extra trust anchors for `ldaps://` and StartTLS (`ca_file`), besides the system store
    /// and the Mozilla roots.
    pub ca: Vec<CertificateDer<'static>>,
    /// Where users are and which attributes mean what.
    pub users: DirectoryUsers,
    /// Where groups are (optional: Active Directory's `memberOf` may be enough).
    pub groups: Option<DirectoryGroups>,
    /// Time between two syncs.
    pub refresh: Duration,
    /// Time allowed for connecting and for each LDAP operation.
    pub timeout: Duration,
    /// Entries per page of the paged search (RFC 2696).
    pub page_size: u32,
}

impl DirectoryConfig {
    /// What decides the content of a snapshot: server, bind identity, bases, filters and
    /// attribute names (not the password, refresh or timeouts). A persisted snapshot is used only
    /// while this is unchanged, so one taken with other settings never grants groups.
    pub fn fingerprint(&self) -> String {
        let g = self.groups.as_ref();
        let parts = [
            self.url.as_str(),
            self.bind_dn.as_deref().unwrap_or(""),
            self.users.base.as_str(),
            self.users.filter.as_str(),
            self.users.id.as_str(),
            self.users.temp_auth_email.as_deref().unwrap_or(""),
            self.users.member_of.as_deref().unwrap_or(""),
            g.map_or("", |g| g.base.as_str()),
            g.map_or("", |g| g.filter.as_str()),
            g.map_or("", |g| g.name.as_str()),
            g.map_or("", |g| g.member.as_str()),
        ];
        let mut text = String::new();
        for p in parts {
            // Length-prefixed, so no two different settings give the same text.
            text.push_str(&format!("{}:{p};", p.len()));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `directory.users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUsers {
    /// Search base (subtree).
    pub base: String,
    /// Search filter (default `(objectClass=inetOrgPerson)`).
    pub filter: String,
    /// Attribute holding the user id (default `mail`).
    pub id: String,
    /// Attribute holding the temporary-authentication address (optional).
    pub temp_auth_email: Option<String>,
    /// Attribute listing the DNs of the user's groups (Active Directory: `memberOf`).
    pub member_of: Option<String>,
}

/// `directory.groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryGroups {
    /// Search base (subtree).
    pub base: String,
    /// Search filter (default `(|(objectClass=groupOfNames)(objectClass=group))`).
    pub filter: String,
    /// Attribute holding the group name the `group` selector matches (default `cn`).
    pub name: String,
    /// Attribute listing the members' DNs (default `member`).
    pub member: String,
}
