//! `users`: the users hosted in the config file.

use std::collections::HashSet;

use super::super::UserConfig;
use super::{Ctx, file, group_name};
use crate::email::Email;

pub(super) fn users(c: &mut Ctx<'_>, list: Vec<Option<file::UserFile>>) -> Vec<UserConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, u) in list.into_iter().enumerate() {
        let Some(u) = u else { continue };
        let at = format!("users[{i}]");
        let id = match Email::parse(&u.id) {
            Ok(e) => e.to_string(),
            Err(_) => {
                let id = u.id.trim().to_owned();
                if id.is_empty() || id.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                    c.err(
                        format!("{at}.id"),
                        "must be an address or a name without spaces",
                    );
                }
                if u.temp_auth_email.is_none() {
                    c.warn(
                        format!("{at}.id"),
                        "not an address and no temp_auth_email: nothing can be mailed to this user",
                    );
                }
                id
            }
        };
        if !seen.insert(id.clone()) {
            c.err(format!("{at}.id"), format!("user {id:?} is listed twice"));
        }
        let temp_auth_email = u
            .temp_auth_email
            .as_deref()
            .and_then(|e| match Email::parse(e) {
                Ok(e) => Some(e),
                Err(err) => {
                    c.err(
                        format!("{at}.temp_auth_email"),
                        format!("invalid address {e:?}: {err}"),
                    );
                    None
                }
            });
        let mut groups = Vec::new();
        for (j, g) in u.groups.iter().enumerate() {
            match group_name(g) {
                Ok(g) => groups.push(g),
                Err(e) => c.err(format!("{at}.groups[{j}]"), e),
            }
        }
        out.push(UserConfig {
            id,
            temp_auth_email,
            groups,
        });
    }
    out
}
