//! Distinguished names (RFC 4514), parsed just far enough to compare them. Group `member`
//! values, Active Directory `memberOf` values and the DNs of the entries themselves are written
//! by different code paths, with different case, spacing and escaping; membership is decided by
//! comparing their normal forms.
//!
//! The normal form lower-cases attribute types and values (the attributes DNs are built from in
//! practice — `cn`, `uid`, `ou`, `dc`, `o`, `l` — all compare case-insensitively), removes
//! insignificant spaces, decodes escapes, orders the values of a multi-valued RDN, and escapes
//! the special characters again in one fixed way.

use std::fmt::Write as _;

/// Why a DN could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnError {
    /// Empty, or an empty RDN (`a=b,,c=d`).
    #[error("empty DN or RDN")]
    Empty,
    /// An attribute-value pair without `=`, or with an empty attribute type.
    #[error("expected attribute=value")]
    Pair,
    /// An attribute type that is neither a name nor a numeric OID.
    #[error("invalid attribute type {0:?}")]
    Type(String),
    /// A backslash not followed by a special character or two hex digits.
    #[error("invalid escape")]
    Escape,
    /// Escaped bytes that are not UTF-8.
    #[error("value is not UTF-8")]
    Utf8,
}

/// One attribute type and value, the type lower-cased, the value unescaped and trimmed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ava {
    /// Attribute type (`cn`), lower-cased.
    pub attr: String,
    /// Value as written, escapes decoded, leading and trailing spaces removed.
    pub value: String,
}

/// Splits `s` at unescaped occurrences of any of `seps`.
fn split_unescaped<'a>(s: &'a str, seps: &[u8]) -> Vec<&'a str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if seps.contains(&b) => {
                out.push(&s[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    out.push(&s[start.min(s.len())..]);
    out
}

/// Decodes `\X` (special character) and `\HH` (hex byte) escapes.
fn unescape(v: &str) -> Result<String, DnError> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let byte = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(byte).map_err(|_| DnError::Escape)?);
                i += 3;
            }
            (Some(&c), _) if b" \"#+,;<=>\\".contains(&c) => {
                out.push(c);
                i += 2;
            }
            _ => return Err(DnError::Escape),
        }
    }
    String::from_utf8(out).map_err(|_| DnError::Utf8)
}

fn valid_type(t: &str) -> bool {
    let b = t.as_bytes();
    let descr = b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
    let oid = !t.is_empty()
        && t.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    descr || oid
}

/// Parses a DN into its RDNs, each a list of attribute-value pairs (outermost RDN last, as
/// written). `,` and `;` separate RDNs, `+` the values of one RDN.
pub(crate) fn parse(dn: &str) -> Result<Vec<Vec<Ava>>, DnError> {
    if dn.trim().is_empty() {
        return Err(DnError::Empty);
    }
    let mut rdns = Vec::new();
    for rdn in split_unescaped(dn, b",;") {
        if rdn.trim().is_empty() {
            return Err(DnError::Empty);
        }
        let mut avas = Vec::new();
        for ava in split_unescaped(rdn, b"+") {
            let Some((attr, value)) = ava.split_once('=') else {
                return Err(DnError::Pair);
            };
            let attr = attr.trim();
            if attr.is_empty() {
                return Err(DnError::Pair);
            }
            if !valid_type(attr) {
                return Err(DnError::Type(attr.to_owned()));
            }
            // An escaped trailing space (`\ `) is significant; everything else around the value
            // is not.
            let trimmed = value.trim_start();
            let trimmed = if trimmed.ends_with("\\ ") {
                trimmed
            } else {
                trimmed.trim_end()
            };
            avas.push(Ava {
                attr: attr.to_ascii_lowercase(),
                value: unescape(trimmed)?.trim().to_owned(),
            });
        }
        rdns.push(avas);
    }
    Ok(rdns)
}

/// The normal form of a DN, for comparisons.
pub(crate) fn normalise(dn: &str) -> Result<String, DnError> {
    let rdns = parse(dn)?;
    let mut out = String::with_capacity(dn.len());
    for (i, rdn) in rdns.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut avas: Vec<(String, String)> = rdn
            .into_iter()
            .map(|a| {
                let folded = a.value.to_lowercase();
                // Runs of spaces inside a value are insignificant for the matching rules.
                let value = folded.split_whitespace().collect::<Vec<_>>().join(" ");
                (a.attr, value)
            })
            .collect();
        avas.sort();
        for (j, (attr, value)) in avas.into_iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            out.push_str(&attr);
            out.push('=');
            for ch in value.chars() {
                if matches!(ch, '\\' | ',' | '+' | '=' | '"' | '<' | '>' | ';' | '#') {
                    out.push('\\');
                }
                let _ = write!(out, "{ch}");
            }
        }
    }
    Ok(out)
}

/// The value of the first attribute of the first RDN, as written (`Engineering` for
/// `CN=Engineering,OU=Groups,DC=corp,DC=example`).
pub(crate) fn first_value(dn: &str) -> Option<String> {
    parse(dn)
        .ok()?
        .into_iter()
        .next()?
        .into_iter()
        .next()
        .map(|a| a.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_spaces_and_escapes_do_not_matter() {
        let a = normalise("CN=Alice Example, OU=People,DC=corp,DC=example").unwrap();
        let b = normalise("cn=alice   example,ou=people , dc=CORP,dc=example").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, "cn=alice example,ou=people,dc=corp,dc=example");
        assert_eq!(
            normalise(r"cn=Smith\, John,ou=people").unwrap(),
            normalise(r"CN=Smith\2C John,OU=People").unwrap()
        );
        assert_eq!(
            normalise(r"cn=Smith\, John,ou=people").unwrap(),
            r"cn=smith\, john,ou=people"
        );
        assert_ne!(
            normalise("cn=a,ou=x").unwrap(),
            normalise("cn=a,ou=y").unwrap()
        );
    }

    #[test]
    fn multi_valued_rdns_are_ordered() {
        assert_eq!(
            normalise("uid=a+cn=B,dc=x").unwrap(),
            normalise("CN=b + UID=A,dc=x").unwrap()
        );
    }

    #[test]
    fn utf8_values_and_hex_escapes() {
        assert_eq!(
            normalise(r"cn=J\C3\BCrgen,dc=x").unwrap(),
            normalise("CN=JÜRGEN,dc=x").unwrap()
        );
        assert_eq!(first_value(r"CN=J\C3\BCrgen,dc=x").unwrap(), "Jürgen");
    }

    #[test]
    fn malformed_dns_are_refused() {
        assert_eq!(parse(""), Err(DnError::Empty));
        assert_eq!(parse("cn=a,,dc=x"), Err(DnError::Empty));
        assert_eq!(parse("cn"), Err(DnError::Pair));
        assert_eq!(parse("=a"), Err(DnError::Pair));
        assert_eq!(parse("c n=a"), Err(DnError::Type("c n".into())));
        assert_eq!(parse(r"cn=a\zz"), Err(DnError::Escape));
        assert_eq!(parse(r"cn=\FF\FE"), Err(DnError::Utf8));
        assert!(parse("2.5.4.3=a,dc=x").is_ok());
    }

    #[test]
    fn first_value_is_the_leftmost_rdn() {
        assert_eq!(
            first_value("CN=Engineering,OU=Groups,DC=corp,DC=example").as_deref(),
            Some("Engineering")
        );
        assert_eq!(first_value("not a dn"), None);
    }
}
