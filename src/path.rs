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
    /// `%25` followed by two hex digits: a second decoding would change the path.
    #[error("double percent-encoding in path")]
    DoubleEncoding,
    /// A `;parameter` in a segment other than the last (servlet containers drop it, so
    /// `/;/admin` would reach `/admin` past a policy on `/admin`).
    #[error("path parameter before the last segment")]
    Parameter,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters whose escapes are decoded: RFC 3986 unreserved characters and the sub-delimiters,
/// `:` and `@` that a path may contain literally. Upstream servers decode these before routing,
/// so `/%40admin` and `/@admin` must be one path for the policies too.
fn decoded(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Normalises an origin-form path (no query) to one spelling: escapes of the characters above
/// decoded, every other escape upper-case, raw non-ASCII bytes escaped. Borrowed when nothing
/// had to change, which is the common case on the hot path.
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
                    b'%' if bytes.get(i + 3).copied().and_then(hex).is_some()
                        && bytes.get(i + 4).copied().and_then(hex).is_some() =>
                    {
                        return Err(PathError::DoubleEncoding);
                    }
                    _ => {}
                }
                let canonical = [b'%', HEX_UPPER[usize::from(h)], HEX_UPPER[usize::from(l)]];
                if decoded(v) {
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
            0x80..=0xff => {
                let o = out.get_or_insert_with(|| bytes[..i].to_vec());
                o.extend_from_slice(&[
                    b'%',
                    HEX_UPPER[usize::from(b >> 4)],
                    HEX_UPPER[usize::from(b & 15)],
                ]);
            }
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
        // Every byte written is ASCII.
        Some(v) => Cow::Owned(String::from_utf8(v).map_err(|_| PathError::BadEscape)?),
    };
    check_segments(&path)?;
    Ok(path)
}

/// Where a segment's `;parameters` start (a literal `;` or its escape `%3B`), if anywhere.
fn param_start(seg: &[u8]) -> Option<usize> {
    (0..seg.len())
        .find(|&i| seg[i] == b';' || (seg[i] == b'%' && seg.get(i + 1..i + 3) == Some(b"3B")))
}

fn check_segments(path: &str) -> Result<(), PathError> {
    let p = path.as_bytes();
    let mut start = 1;
    for i in 1..=p.len() {
        if i < p.len() && p[i] != b'/' {
            continue;
        }
        let last = i == p.len();
        let seg = &p[start..i];
        if seg.is_empty() {
            // "/" alone and a trailing slash are fine; "//" in the middle is not.
            if !last {
                return Err(PathError::EmptySegment);
            }
        } else {
            let params = param_start(seg);
            let name = &seg[..params.unwrap_or(seg.len())];
            if name == b"." || name == b".." {
                return Err(PathError::DotSegment);
            }
            if params.is_some() && !last {
                return Err(PathError::Parameter);
            }
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
    let rest = &path.as_bytes()[prefix.len()..];
    rest[0] == b'/' || rest[0] == b';' || rest.starts_with(b"%3B")
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
            ("/%2561dmin", DoubleEncoding),
            ("/a%252Fb", DoubleEncoding),
            ("/;/admin", Parameter),
            ("/admin;x/users", Parameter),
            ("/api;x/admin", Parameter),
            ("/a%3Bx/b", Parameter),
            ("/a%3bx/b", Parameter),
            ("/.%3B/x", DotSegment),
            ("/..%3bx", DotSegment),
        ];
        for (p, want) in cases {
            assert_eq!(normalise(p), Err(want), "{p:?}");
        }
    }

    #[test]
    fn one_spelling_per_path() {
        // Sub-delimiters, `:` and `@` are decoded; raw non-ASCII is escaped.
        assert_eq!(normalise("/%40admin").unwrap(), "/@admin");
        assert_eq!(normalise("/a%3db%2C%3A").unwrap(), "/a=b,:");
        assert_eq!(normalise("/donn\u{e9}es/x").unwrap(), "/donn%C3%A9es/x");
        assert_eq!(normalise("/donn%c3%a9es/x").unwrap(), "/donn%C3%A9es/x");
        // Reserved characters that change meaning stay escaped.
        assert_eq!(
            normalise("/a%3fb%23c%20d%3bx").unwrap(),
            "/a%3Fb%23c%20d%3Bx"
        );
        assert_eq!(normalise("/100%25").unwrap(), "/100%25");
        // The last segment may carry parameters.
        assert_eq!(normalise("/x;jsessionid=1").unwrap(), "/x;jsessionid=1");
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
        assert!(prefix_covers("/admin", "/admin%3Bv=1"));
        assert!(!prefix_covers("/admin", "/administrator"));
        assert!(!prefix_covers("/admin", "/adm"));
        assert!(prefix_covers("/static/", "/static/app.js"));
        assert!(!prefix_covers("/static/", "/static"));
        assert!(prefix_covers("/", "/anything"));
    }

    proptest! {
        #[test]
        fn output_is_a_fixed_point_and_never_ambiguous(p in "/[a-zA-Z0-9%./;_~@:=\\-\\u{e9}]{0,40}") {
            if let Ok(n) = normalise(&p) {
                let again = normalise(&n).unwrap();
                prop_assert_eq!(again.as_ref(), n.as_ref());
                let lower = n.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("//"));
                prop_assert!(!n.split('/').any(|s| s == "." || s == ".."));
                prop_assert!(n.is_ascii());
                // No parameters before the last segment.
                let segs: Vec<&str> = n.split('/').collect();
                prop_assert!(segs[..segs.len() - 1].iter().all(|s| !s.contains(';') && !s.contains("%3B")));
            }
        }
    }
}
