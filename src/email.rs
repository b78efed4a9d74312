//! E-mail address syntax and normalisation (docs/security.md#6–#8), decided from the text alone.
//!
//! The accepted language is deliberately narrower than RFC 5322: a dot-atom local part and a DNS
//! domain of LDH labels, ASCII only. The one normalised string produced here is the identity,
//! the allow-list key, the rate-limit key and the SMTP recipient.

use std::fmt;

/// Longest accepted address, in octets (RFC 5321 s4.5.3.1 path limit minus the brackets).
pub const MAX_LEN: usize = 254;
/// Longest local part, in octets.
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest DNS label, in octets.
pub const MAX_LABEL_LEN: usize = 63;

/// A syntactically valid, normalised (ASCII-lower-cased) address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

/// Why an address was refused. The variants exist for tests and logs; users see one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Empty after trimming.
    #[error("empty address")]
    Empty,
    /// Longer than 254 octets.
    #[error("address longer than 254 octets")]
    TooLong,
    /// Contains a byte outside printable ASCII.
    #[error("address is not ASCII")]
    NotAscii,
    /// Not exactly one `@`.
    #[error("address must contain exactly one @")]
    At,
    /// The part before `@` is not a dot-atom of 1 to 64 octets.
    #[error("invalid local part")]
    Local,
    /// The part after `@` is not a DNS name of two or more LDH labels.
    #[error("invalid domain")]
    Domain,
}

impl Email {
    /// Validates and normalises an address typed by a person (R-E1, R-E2, R-E3).
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let s = input.trim_matches([' ', '\t']);
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if !s.is_ascii() {
            return Err(EmailError::NotAscii);
        }
        if s.len() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        let mut parts = s.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EmailError::At);
        };
        if !is_dot_atom(local) {
            return Err(EmailError::Local);
        }
        if !is_dns_domain(domain) {
            return Err(EmailError::Domain);
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// Rebuilds an address the gateway itself validated and sealed (a cookie or token whose
    /// authenticity was verified); only a cheap sanity check is repeated.
    pub(crate) fn from_sealed(s: &str) -> Option<Self> {
        let sane = s.len() <= MAX_LEN
            && s.bytes().filter(|b| *b == b'@').count() == 1
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase());
        sane.then(|| Self(s.to_owned()))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part (after the `@`).
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

/// RFC 5322 `atext`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_dot_atom(local: &str) -> bool {
    (1..=MAX_LOCAL_LEN).contains(&local.len())
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// A DNS name of two or more LDH labels, lower or upper case, whose last label is not all
/// digits (which also rules out dotted-quad IP addresses); no trailing dot.
pub fn is_dns_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| is_ldh_label(l))
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

fn is_ldh_label(label: &str) -> bool {
    let b = label.as_bytes();
    (1..=MAX_LABEL_LEN).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_normalises() {
        let e = Email::parse("  Alice.Smith+Tag@Corp.Example\t").unwrap();
        assert_eq!(e.as_str(), "alice.smith+tag@corp.example");
        assert_eq!(e.domain(), "corp.example");
        assert!(Email::parse("x@a-b.c0").is_ok());
        assert!(Email::parse("o'brien@example.org").is_ok());
        assert!(Email::parse(&format!("{}@example.org", "a".repeat(64))).is_ok());
    }

    #[test]
    fn normalisation_keeps_plus_tags_and_dots() {
        // R-E2: no stripping of tags or dots, ASCII lower-casing only.
        assert_eq!(Email::parse("A.B+c@X.ORG").unwrap().as_str(), "a.b+c@x.org");
    }

    #[test]
    fn rejects() {
        let long_label = format!("a@{}.org", "b".repeat(64));
        let long_local = format!("{}@example.org", "a".repeat(65));
        let too_long = format!("a@{}.org", vec!["b".repeat(60); 5].join("."));
        let cases: &[&str] = &[
            "",
            "   ",
            "alice",
            "alice@",
            "@example.org",
            "a@@example.org",
            "a@b@example.org",
            "a@localhost",
            "a@[127.0.0.1]",
            "a@127.0.0.1",
            "a@example.123",
            "a@example.org.",
            "a@-example.org",
            "a@example-.org",
            "a@exa_mple.org",
            "a@.example.org",
            "a@example..org",
            ".a@example.org",
            "a.@example.org",
            "a..b@example.org",
            "\"a b\"@example.org",
            "Alice <a@example.org>",
            "a(comment)@example.org",
            "a b@example.org",
            "a@exämple.org",
            "ä@example.org",
            "a@example.org\r\nBcc: x@evil.example",
            "a\0@example.org",
            &long_label,
            &long_local,
            &too_long,
        ];
        for c in cases {
            assert!(Email::parse(c).is_err(), "{c:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_stable(s in "\\PC{0,80}") {
            if let Ok(e) = Email::parse(&s) {
                // Accepted output is ASCII, lower-case, bounded, and a fixed point.
                prop_assert!(e.as_str().is_ascii());
                prop_assert!(e.as_str().len() <= MAX_LEN);
                prop_assert!(!e.as_str().bytes().any(|b| b.is_ascii_uppercase() || b.is_ascii_control()));
                prop_assert_eq!(Email::parse(e.as_str()).unwrap(), e);
            }
        }

        #[test]
        fn generated_valid_addresses_are_accepted(
            local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-zA-Z0-9_-]{1,10}){0,2}",
            labels in proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", 1..4),
            tld in "[a-zA-Z][a-zA-Z0-9]{1,5}",
        ) {
            let addr = format!("{local}@{}.{tld}", labels.join("."));
            let e = Email::parse(&addr).unwrap();
            prop_assert_eq!(e.as_str(), addr.to_ascii_lowercase());
        }
    }
}
