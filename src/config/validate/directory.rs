//! `directory`: the LDAP / Active Directory server, how to bind, and where users and groups
//! are. URLs, filters, DNs and attribute names are checked here so a typo is found by
//! `check-config` rather than by the first sync.

use std::net::IpAddr;
use std::time::Duration;

use super::super::{DirectoryConfig, DirectoryGroups, DirectoryUsers, Secret};
use super::{Ctx, MINUTE, file};

/// Default `directory.users.filter`.
pub(crate) const DEFAULT_USER_FILTER: &str = "(objectClass=inetOrgPerson)";
/// Default `directory.groups.filter`: OpenLDAP's `groupOfNames` and Active Directory's `group`.
pub(crate) const DEFAULT_GROUP_FILTER: &str = "(|(objectClass=groupOfNames)(objectClass=group))";

pub(super) fn directory(c: &mut Ctx<'_>, d: file::DirectoryFile) -> Option<DirectoryConfig> {
    let errors_before = c.errors.len();
    let url = directory_url(c, &d.url, d.starttls);
    let (bind_dn, bind_password) = bind(c, &d);
    let mut ca = Vec::new();
    if let Some(f) = &d.ca_file {
        ca = c.trust_anchors("directory.ca_file", f);
        if !d.starttls && url.as_deref().is_some_and(|u| u.starts_with("ldap://")) {
            c.warn(
                "directory.ca_file",
                "only used with ldaps:// or starttls: true",
            );
        }
    }
    let users = users(c, d.users);
    let groups = d.groups.map(|g| groups(c, g));
    let refresh = c.positive("directory.refresh", d.refresh, 5 * MINUTE);
    if refresh < Duration::from_secs(1) {
        c.err("directory.refresh", "must be at least 1s");
    }
    let timeout = c.positive("directory.timeout", d.timeout, Duration::from_secs(30));
    let page_size = d.page_size.unwrap_or(500);
    if !(1..=100_000).contains(&page_size) {
        c.err("directory.page_size", "must be between 1 and 100000");
    }
    let url = url?;
    (c.errors.len() == errors_before).then_some(DirectoryConfig {
        url,
        starttls: d.starttls,
        bind_dn,
        bind_password,
        ca,
        users,
        groups,
        refresh,
        timeout,
        page_size,
    })
}

/// The bind identity: a DN and its password, or neither (an anonymous bind).
fn bind(c: &mut Ctx<'_>, d: &file::DirectoryFile) -> (Option<String>, Option<Secret>) {
    let bind_dn = match d.bind_dn.as_deref().map(str::trim) {
        None => None,
        Some("") => {
            c.err(
                "directory.bind_dn",
                "must not be empty (leave it out to bind anonymously)",
            );
            None
        }
        Some(dn) => {
            if let Err(e) = crate::dn::parse(dn) {
                c.err("directory.bind_dn", format!("invalid DN {dn:?}: {e}"));
            }
            Some(dn.to_owned())
        }
    };
    let bind_password = c.secret(
        "directory",
        d.bind_password_file.as_deref(),
        d.bind_password.as_deref(),
        "bind_password_file",
        "bind_password",
    );
    match (&bind_dn, &bind_password) {
        (None, Some(_)) => c.err(
            "directory.bind_dn",
            "a bind password needs the DN to bind as",
        ),
        // A simple bind with an empty password is an unauthenticated bind (RFC 4513 5.1.2):
        // servers answer success and then treat the session as anonymous.
        (Some(_), None) if d.bind_password_file.is_none() && d.bind_password.is_none() => {
            c.err(
                "directory.bind_password_file",
                "required with bind_dn (leave bind_dn out to bind anonymously)",
            );
        }
        (None, None) => c.warn(
            "directory.bind_dn",
            "no bind_dn: the directory is read with an anonymous bind",
        ),
        _ => {}
    }
    (bind_dn, bind_password)
}

fn users(c: &mut Ctx<'_>, u: file::DirectoryUsersFile) -> DirectoryUsers {
    DirectoryUsers {
        base: base_dn(c, "directory.users.base", &u.base),
        filter: ldap_filter(c, "directory.users.filter", u.filter, DEFAULT_USER_FILTER),
        id: attribute(c, "directory.users.id", u.id, "mail"),
        temp_auth_email: u
            .temp_auth_email
            .map(|a| attribute(c, "directory.users.temp_auth_email", Some(a), "")),
        member_of: u
            .member_of
            .map(|a| attribute(c, "directory.users.member_of", Some(a), "")),
    }
}

fn groups(c: &mut Ctx<'_>, g: file::DirectoryGroupsFile) -> DirectoryGroups {
    DirectoryGroups {
        base: base_dn(c, "directory.groups.base", &g.base),
        filter: ldap_filter(c, "directory.groups.filter", g.filter, DEFAULT_GROUP_FILTER),
        name: attribute(c, "directory.groups.name", g.name, "cn"),
        member: attribute(c, "directory.groups.member", g.member, "member"),
    }
}

/// `ldap://host[:port]` or `ldaps://host[:port]`, nothing else (RFC 4516's DN, attributes and
/// filter parts of an LDAP URL have their own keys here).
fn directory_url(c: &mut Ctx<'_>, text: &str, starttls: bool) -> Option<String> {
    let at = "directory.url";
    let url = match url::Url::parse(text.trim()) {
        Ok(u) => u,
        Err(e) => {
            c.err(
                at,
                format!("expected ldap://host[:port] or ldaps://host[:port]: {e}"),
            );
            return None;
        }
    };
    let ldaps = match url.scheme() {
        "ldap" => false,
        "ldaps" => true,
        other => {
            c.err(
                at,
                format!("expected ldap:// or ldaps://, found scheme {other:?}"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        c.err(
            at,
            "must not contain a user name or password (use bind_dn and bind_password_file)",
        );
        return None;
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => {
            c.err(at, "missing host");
            return None;
        }
    };
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        c.err(
            at,
            "expected ldap://host[:port] or ldaps://host[:port] without a DN, query or fragment (bases and filters have their own keys)",
        );
        return None;
    }
    if starttls && ldaps {
        c.err(
            "directory.starttls",
            "ldaps:// is TLS from the first byte already",
        );
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    if !ldaps && !starttls && !loopback {
        c.warn(
            at,
            "ldap:// without starttls: the bind password and the directory's answers cross the network in cleartext",
        );
    }
    Some(text.trim().to_owned())
}

fn base_dn(c: &mut Ctx<'_>, at: &str, dn: &str) -> String {
    let dn = dn.trim();
    if dn.is_empty() {
        c.err(at, "must not be empty");
    } else if let Err(e) = crate::dn::parse(dn) {
        c.err(at, format!("invalid DN {dn:?}: {e}"));
    }
    dn.to_owned()
}

fn ldap_filter(c: &mut Ctx<'_>, at: &str, filter: Option<String>, default: &str) -> String {
    let f = filter.map_or_else(|| default.to_owned(), |f| f.trim().to_owned());
    if !(f.starts_with('(') && f.ends_with(')')) || ldap3::parse_filter(&f).is_err() {
        c.err(
            at,
            format!("invalid LDAP filter {f:?} (RFC 4515, like (objectClass=inetOrgPerson))"),
        );
    }
    f
}

/// An attribute description: a name (`mail`, `sAMAccountName`) or a numeric OID.
fn attribute(c: &mut Ctx<'_>, at: &str, name: Option<String>, default: &str) -> String {
    let n = name.map_or_else(|| default.to_owned(), |n| n.trim().to_owned());
    let b = n.as_bytes();
    let descr = b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.iter().all(|ch| ch.is_ascii_alphanumeric() || *ch == b'-');
    let oid = !n.is_empty()
        && n.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|ch| ch.is_ascii_digit()));
    if !(descr || oid) {
        c.err(
            at,
            format!(
                "invalid attribute name {n:?} (letters, digits and '-', starting with a letter)"
            ),
        );
    }
    n
}
