//! Request-path normalisation: what policies check must be exactly what is forwarded.
//!
//! Percent-escapes of unreserved characters are decoded (so `/%61dmin` is `/admin`), other
//! escapes are kept with upper-case hex. Anything whose meaning differs between servers is
//! refused instead of guessed: encoded `/` and `\`, a raw `\`, dot segments (also `%2e` and the
//! servlet `..;` form), empty segments (`//`), control bytes (NUL included) and broken escapes.

use std::borrow::Cow;

/// Why a path was refused (the client gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
    /// `%2f` or `%2F`.
    #[error("encoded slash in path")]
    EncodedSlash,
    /// `%5c`, `%5C` or a raw backslash.
    #[error("backslash in path")]
    Backslash,
    /// A `.` or `..` segment, however spelt.
    #[error("dot segment in path")]
    DotSegment,
    /// An empty segment (`//`).
    #[error("empty segment in path")]
    EmptySegment,
    /// A control byte, raw or encoded (NUL included).
    #[error("control character in path")]
    Control,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-escape in path")]
    BadEscape,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Normalises an origin-form path (no query). Borrowed when nothing had to change, which is
/// the common case on the hot path.
pub fn normalise(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0x00..=0x1f | 0x7f => return Err(PathError::Control),
                    _ => {}
                }
                let canonical = [b'%', HEX_UPPER[usize::from(h)], HEX_UPPER[usize::from(l)]];
                if is_unreserved(v) {
                    out.get_or_insert_with(|| bytes[..i].to_vec()).push(v);
                } else if bytes[i..i + 3] != canonical {
                    out.get_or_insert_with(|| bytes[..i].to_vec())
                        .extend_from_slice(&canonical);
                } else if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&canonical);
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            0x00..=0x1f | 0x7f => return Err(PathError::Control),
            _ => {
                if let Some(o) = out.as_mut() {
                    o.push(b);
                }
            }
        }
        i += 1;
    }
    let path: Cow<'_, str> = match out {
        None => Cow::Borrowed(raw),
        // Only ASCII bytes were substituted into a string that was valid UTF-8.
        Some(v) => Cow::Owned(String::from_utf8(v).map_err(|_| PathError::BadEscape)?),
    };
    check_segments(&path)?;
    Ok(path)
}

fn check_segments(path: &str) -> Result<(), PathError> {
    let p = path.as_bytes();
    let mut start = 1;
    for i in 1..=p.len() {
        if i < p.len() && p[i] != b'/' {
            continue;
        }
        let seg = &p[start..i];
        match seg.first() {
            // "/" alone and a trailing slash are fine; "//" in the middle is not.
            None if i < p.len() => return Err(PathError::EmptySegment),
            // Only segments starting with a dot can be dot segments (also "..;x", which
            // servlet containers read as "..").
            Some(b'.') => {
                let name = seg.split(|b| *b == b';').next().unwrap_or(seg);
                if name == b"." || name == b".." {
                    return Err(PathError::DotSegment);
                }
            }
            _ => {}
        }
        start = i + 1;
    }
    Ok(())
}

/// Whether `prefix` (a normalised path) covers `path`: the same path, or a path below it.
/// `/admin` covers `/admin`, `/admin/x` and `/admin;v=1` but not `/administrator`; a prefix
/// ending in `/` covers everything below that folder.
pub fn prefix_covers(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    if prefix.ends_with('/') || path.len() == prefix.len() {
        return true;
    }
    matches!(path.as_bytes()[prefix.len()], b'/' | b';')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_ordinary_paths_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/static/app.js",
            "/a%20b",
            "/x;jsessionid=1",
            "/caf%C3%A9",
        ] {
            let n = normalise(p).unwrap();
            assert!(matches!(n, Cow::Borrowed(_)), "{p}");
            assert_eq!(n, p);
        }
    }

    #[test]
    fn decodes_unreserved_and_uppercases_escapes() {
        assert_eq!(normalise("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalise("/%7euser").unwrap(), "/~user");
        assert_eq!(normalise("/a%2db").unwrap(), "/a-b");
        assert_eq!(normalise("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalise("/%41%2e%42").unwrap(), "/A.B");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        use PathError::*;
        let cases = [
            ("", NotAbsolute),
            ("*", NotAbsolute),
            ("admin", NotAbsolute),
            ("/a%2fb", EncodedSlash),
            ("/a%2Fb", EncodedSlash),
            ("/a%5cb", Backslash),
            ("/a%5Cb", Backslash),
            ("/a\\b", Backslash),
            ("/.", DotSegment),
            ("/..", DotSegment),
            ("/a/../admin", DotSegment),
            ("/a/./b", DotSegment),
            ("/a/%2e%2e/admin", DotSegment),
            ("/a/%2E/b", DotSegment),
            ("/a/.%2e/b", DotSegment),
            ("/a/..;/admin", DotSegment),
            ("/a/.;x/b", DotSegment),
            ("//admin", EmptySegment),
            ("/a//b", EmptySegment),
            ("/a%00b", Control),
            ("/a%0ab", Control),
            ("/a%7Fb", Control),
            ("/a\u{0}b", Control),
            ("/a%", BadEscape),
            ("/a%4", BadEscape),
            ("/a%zz", BadEscape),
        ];
        for (p, want) in cases {
            assert_eq!(normalise(p), Err(want), "{p:?}");
        }
    }

    #[test]
    fn dots_inside_names_are_fine() {
        for p in ["/a.b", "/.well-known/x", "/...", "/a/..b", "/..a/"] {
            assert!(normalise(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn prefix_matching_is_segment_aware() {
        assert!(prefix_covers("/admin", "/admin"));
        assert!(prefix_covers("/admin", "/admin/"));
        assert!(prefix_covers("/admin", "/admin/x"));
        assert!(prefix_covers("/admin", "/admin;v=1"));
        assert!(!prefix_covers("/admin", "/administrator"));
        assert!(!prefix_covers("/admin", "/adm"));
        assert!(prefix_covers("/static/", "/static/app.js"));
        assert!(!prefix_covers("/static/", "/static"));
        assert!(prefix_covers("/", "/anything"));
    }

    proptest! {
        #[test]
        fn output_is_a_fixed_point_and_never_ambiguous(p in "/[a-zA-Z0-9%./;_~\\-]{0,40}") {
            if let Ok(n) = normalise(&p) {
                let again = normalise(&n).unwrap();
                prop_assert_eq!(again.as_ref(), n.as_ref());
                let lower = n.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("//"));
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
            }
        }
    }
}
