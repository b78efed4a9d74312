//! Identity headers a client must never get to the upstream (docs/security.md#40): the ones
//! other gateways and web servers set, which apps migrated from them still trust, the
//! operator's `strip_request_headers`, and the names an app's own identity travels under.
//!
//! Each app gets one [`Strip`], built with its runtime; a request's headers are checked in the
//! one pass `headers::prepare_request` makes over them anyway.

use crate::config::{HeaderPattern, IdentityHeaders};

/// Identity headers set by oauth2-proxy, Authelia, Grafana's auth proxy, Cloudflare Access,
/// Pomerium, web servers (`REMOTE_USER`) and otpgate itself. A trailing `*` matches a prefix.
pub const FOREIGN_IDENTITY: &[&str] = &[
    "Remote-User",
    "Remote-Email",
    "Remote-Groups",
    "Remote-Name",
    "X-Remote-User",
    "X-Remote-Email",
    "X-Remote-Groups",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-*",
    "X-Webauth-*",
    "Cf-Access-Authenticated-User-Email",
    "Cf-Access-Jwt-Assertion",
    "X-Pomerium-*",
    "Otpgate-*",
    "X-Otpgate-*",
];

/// The request header names one app strips, whatever the policy decided and whoever the peer
/// is. Patterns are kept folded (lower case, `_` as `-`) and grouped by first byte, so a name
/// costs one table lookup and, for the few first bytes in use, a length check per pattern.
#[derive(Debug, Clone)]
pub struct Strip {
    /// Sorted by first byte.
    patterns: Vec<HeaderPattern>,
    /// `patterns[start..end]` begin with the byte this is indexed by.
    spans: [(u16, u16); 128],
}

impl Strip {
    /// The foreign identity headers, the operator's list, and the app's identity header names
    /// (so a client can never supply them).
    pub fn new(operator: &[HeaderPattern], identity: &IdentityHeaders) -> Self {
        let patterns: Vec<HeaderPattern> = FOREIGN_IDENTITY
            .iter()
            .filter_map(|p| HeaderPattern::parse(p))
            .chain(operator.iter().cloned())
            .chain(
                [&identity.email, &identity.user, &identity.groups]
                    .into_iter()
                    .map(HeaderPattern::from),
            )
            .collect();
        Self::from_patterns(patterns)
    }

    fn from_patterns(mut patterns: Vec<HeaderPattern>) -> Self {
        patterns.retain(|p| !p.folded.is_empty());
        patterns.sort_by(|a, b| (&a.folded, a.prefix).cmp(&(&b.folded, b.prefix)));
        patterns.dedup();
        let mut spans = [(0u16, 0u16); 128];
        for (i, p) in patterns.iter().enumerate() {
            let (Some(&b), Ok(i)) = (p.folded.as_bytes().first(), u16::try_from(i)) else {
                continue;
            };
            let Some(span) = spans.get_mut(usize::from(b)) else {
                continue;
            };
            if span.1 == 0 {
                span.0 = i;
            }
            span.1 = i + 1;
        }
        Self { patterns, spans }
    }

    /// Whether a request header (its lower-case name, as `http` keeps it) must go.
    pub fn matches(&self, name: &[u8]) -> bool {
        let Some(&first) = name.first() else {
            return false;
        };
        let first = if first == b'_' { b'-' } else { first };
        let Some(&(start, end)) = self.spans.get(usize::from(first)) else {
            return false;
        };
        let Some(candidates) = self.patterns.get(usize::from(start)..usize::from(end)) else {
            return false;
        };
        candidates.iter().any(|p| {
            let want = p.folded.as_bytes();
            if p.prefix {
                name.len() >= want.len() && folded_eq(&name[..want.len()], want)
            } else {
                folded_eq(name, want)
            }
        })
    }
}

impl Strip {
    /// The same list plus the configured identity-assertion header (docs/security.md#34): a
    /// client's is never passed on. The default name is among the `Otpgate-*` names already.
    pub fn with_assertion(self, header: Option<&http::HeaderName>) -> Self {
        let Some(h) = header else { return self };
        let extra: Vec<HeaderPattern> = self
            .patterns
            .iter()
            .cloned()
            .chain(std::iter::once(HeaderPattern::from(h)))
            .collect();
        Self::from_patterns(extra)
    }
}

impl Default for Strip {
    /// The foreign identity headers and the default `X-Otpgate-*` names only.
    fn default() -> Self {
        Self::new(&[], &IdentityHeaders::default())
    }
}

/// Compares a lower-case header name with a folded pattern, treating `_` as `-`.
pub(super) fn folded_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name
            .iter()
            .zip(want)
            .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(operator: &[&str], identity: &IdentityHeaders) -> Strip {
        let operator: Vec<HeaderPattern> = operator
            .iter()
            .map(|p| HeaderPattern::parse(p).unwrap())
            .collect();
        Strip::new(&operator, identity)
    }

    fn lower(s: &str) -> String {
        s.to_ascii_lowercase()
    }

    #[test]
    fn every_foreign_identity_header_matches_in_every_spelling() {
        let s = Strip::default();
        for p in FOREIGN_IDENTITY {
            let name = p.replace('*', "Anything");
            for spelling in [lower(&name), lower(&name).replace('-', "_"), {
                // Mixed: the first separator as `_`, the others as `-`.
                lower(&name).replacen('-', "_", 1)
            }] {
                assert!(s.matches(spelling.as_bytes()), "{spelling}");
            }
        }
        for p in [
            "x-auth-request-",
            "x-webauth-",
            "otpgate-",
            "x_pomerium_jwt",
        ] {
            assert!(s.matches(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn ordinary_and_neighbouring_names_are_kept() {
        let s = Strip::default();
        for name in [
            "accept",
            "cookie",
            "cf-connecting-ip",
            "cf-access-authenticated-user-emails",
            "remote-user2",
            "remote-use",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-prefix",
            "x-forwarded-user-agent",
            "x-auth-request",
            "x-otpgate",
            "otpgate",
            "x-remote-addr",
            "",
            "_",
            "~x",
        ] {
            assert!(!s.matches(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn sec_34_the_configured_assertion_header_is_stripped_in_every_spelling() {
        let s = Strip::default()
            .with_assertion(Some(&http::HeaderName::from_static("x-identity-token")));
        for name in [
            "x-identity-token",
            "x_identity_token",
            "x-identity_token",
            "otpgate-jwt-assertion",
            "otpgate-jwt_assertion",
        ] {
            assert!(s.matches(name.as_bytes()), "{name}");
        }
        assert!(!s.matches(b"x-identity"));
        assert!(
            Strip::default()
                .with_assertion(None)
                .matches(b"otpgate-jwt-assertion")
        );
    }

    #[test]
    fn the_operators_list_and_the_apps_names_are_stripped_too() {
        let names = IdentityHeaders {
            email: http::HeaderName::from_static("x-employee-mail"),
            user: http::HeaderName::from_static("remote-user"),
            groups: http::HeaderName::from_static("z_groups"),
        };
        let s = strip(&["X-Employee-Id", "X-Legacy-*", "a"], &names);
        for name in [
            "x-employee-id",
            "x_employee_id",
            "x-legacy-",
            "x_legacy_role",
            "x-employee-mail",
            "x_employee_mail",
            "z-groups",
            "z_groups",
            "remote-user",
            "a",
            "x-otpgate-email",
        ] {
            assert!(s.matches(name.as_bytes()), "{name}");
        }
        for name in ["x-employee-idx", "x-legacy", "ab", "z-group"] {
            assert!(!s.matches(name.as_bytes()), "{name}");
        }
    }
}
