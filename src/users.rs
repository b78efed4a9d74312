//! The user table: hosted users from the config (directory-synced users join later). Looked up
//! by normalised address on every authenticated request, so group changes apply at once.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;

use crate::config::UserConfig;
use crate::email::Email;

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
}

/// Users by the addresses they log in with.
#[derive(Debug, Default)]
pub struct Users {
    by_email: HashMap<String, Arc<User>>,
    by_id: HashMap<String, Arc<User>>,
}

impl Users {
    /// The table of the config's hosted users.
    pub fn from_config(users: &[UserConfig]) -> Self {
        let mut t = Self::default();
        for u in users {
            let groups: Vec<Arc<str>> = u.groups.iter().map(|g| Arc::from(g.as_str())).collect();
            let header = HeaderValue::from_str(&u.groups.join(","))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            let user = Arc::new(User {
                id: u.id.clone(),
                temp_auth_email: u.temp_auth_email.clone(),
                groups,
                groups_header: header,
            });
            if Email::parse(&u.id).is_ok() {
                t.by_email.insert(u.id.clone(), user.clone());
            }
            t.by_id.insert(u.id.clone(), user);
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
        let mut v: Vec<Arc<User>> = self
            .by_id
            .values()
            .filter(|u| u.groups.iter().any(|g| g.as_ref() == group))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}
