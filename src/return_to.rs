//! Where to send a person after a login (`rd`), docs/security.md#1–#5.
//!
//! The value is decoded once (as a query parameter, by the caller), parsed once with the
//! WHATWG parser browsers use (the `url` crate), and accepted only as a path on the current app
//! or an absolute URL without credentials whose scheme, host and port equal a configured app
//! origin. What is emitted is the parser's serialisation, never the input, so a `Location`
//! header cannot carry control bytes. The check runs again wherever a redirect is made.

use url::Url;

use crate::config::Origin;

/// Longest return target considered.
pub(crate) const MAX_LEN: usize = 2048;

/// Validates `rd` for a request on the app at `current`; `allowed` are the origins of every
/// configured app. Returns the absolute URL to redirect to, or `None` (use the app's root).
pub(crate) fn validate(rd: &str, current: &Origin, allowed: &[Origin]) -> Option<Url> {
    if rd.is_empty() || rd.len() > MAX_LEN || rd.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    let url = if rd.starts_with('/') {
        // A path on this app. The parser resolves it against the app's origin; a value such as
        // `//evil.example` or `/\evil.example` resolves to another host and fails below.
        Url::parse(&format!("{current}/")).ok()?.join(rd).ok()?
    } else {
        Url::parse(rd).ok()?
    };
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    // A path that normalises to start with `//` (`/./\\evil`) is never a real page; refuse it
    // rather than rely on every consumer emitting absolute URLs.
    if url.path().starts_with("//") {
        return None;
    }
    let origin = origin_of(&url)?;
    let ok = if rd.starts_with('/') {
        origin == *current
    } else {
        origin == *current || allowed.contains(&origin)
    };
    ok.then_some(url)
}

/// The app root, where refused targets send people.
pub(crate) fn root(current: &Origin) -> String {
    format!("{current}/")
}

fn origin_of(url: &Url) -> Option<Origin> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    Some(Origin {
        https: url.scheme() == "https",
        host,
        port: url.port_or_known_default()?,
    })
}

/// The first `rd` parameter of a query string, decoded once. docs/security.md#5: when several are
/// present the first one is used, always.
pub(crate) fn rd_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned())
}

/// `login_path?rd=<target>` with the target encoded as a query parameter.
pub(crate) fn with_rd(base: &str, target: &str) -> String {
    let mut s = String::with_capacity(base.len() + target.len() + 8);
    s.push_str(base);
    s.push_str("?rd=");
    s.extend(url::form_urlencoded::byte_serialize(target.as_bytes()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn app() -> Origin {
        Origin::parse("https://app.example.test").unwrap()
    }
    fn allowed() -> Vec<Origin> {
        vec![
            app(),
            Origin::parse("https://wiki.example.test").unwrap(),
            Origin::parse("http://localhost:8080").unwrap(),
        ]
    }
    fn check(rd: &str) -> Option<String> {
        validate(rd, &app(), &allowed()).map(|u| u.to_string())
    }

    #[test]
    fn sec_1_accepts_app_paths_and_configured_origins() {
        assert_eq!(check("/").as_deref(), Some("https://app.example.test/"));
        assert_eq!(
            check("/docs/a?b=1#c").as_deref(),
            Some("https://app.example.test/docs/a?b=1#c")
        );
        assert_eq!(
            check("https://wiki.example.test/page").as_deref(),
            Some("https://wiki.example.test/page")
        );
        assert_eq!(
            check("https://WIKI.example.test:443/x").as_deref(),
            Some("https://wiki.example.test/x")
        );
        assert_eq!(
            check("http://localhost:8080/x").as_deref(),
            Some("http://localhost:8080/x")
        );
        // Dot segments resolve inside the app.
        assert_eq!(
            check("/a/../../b").as_deref(),
            Some("https://app.example.test/b")
        );
    }

    /// One entry per historical bypass pattern (oauth2-proxy #922, #2635, CVE-2020-5233,
    /// CVE-2020-11053, CVE-2021-21291, CVE-2026-28512; Pomerium CVE-2021-29651; Authelia
    /// CVE-2021-29456).
    #[test]
    fn sec_1_refuses_historical_bypasses() {
        let refused = [
            "",
            "//evil.example",
            "///evil.example",
            "////evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "\\/\\/evil.example/",
            "/\\/evil.example/",
            "/\t/evil.example",
            "/\t\\evil.example",
            "/\u{b}/evil.example",
            "/\n/evil.example",
            "/\r/evil.example",
            "/\r\n/evil.example",
            "/\t\t/\t\\evil.example",
            "/./\\evil.example",
            "/./../../\\evil.example",
            "evil.example/redirect",
            "app.example.test/redirect",
            "https://evil.example",
            "http://evil.example",
            "https://app.example.test.evil.example/",
            "https://evil.example?app.example.test",
            "https://evil.example#app.example.test",
            "https://evil.example/?rd=https://app.example.test",
            "https://app.example.test@evil.example/",
            "https://evil.example@app.example.test/",
            "https://user:pass@app.example.test/",
            "https://app.example.test%2eevil.example/",
            "https://app.example.test%23.evil.example/",
            "https://app.example.test:443@evil.example/",
            "https://evil.example\\.app.example.test",
            "http://app.example.test/",
            "https://app.example.test:8443/",
            "https:evil.example",
            "https:/evil.example",
            "https:///evil.example",
            "//https://evil.example",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "\u{0}javascript:alert(1)",
            "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
            "vbscript:msgbox(1)",
            "ftp://app.example.test/",
            "//evil%00.example",
            "//evil%E3%80%82example",
            "http://0xd8.0x3a.0xd6.0xce",
            "http://3627734734",
            "https://[::ffff:216.58.214.206]/",
            "/\u{7f}/evil.example",
            "@evil.example",
        ];
        for rd in refused {
            assert_eq!(check(rd), None, "{rd:?} was accepted");
        }
        // Historical strings that browsers read as paths: accepted, but only as a path on this
        // app (the serialisation makes them harmless).
        let neutralised = [
            (
                "/ /evil.example",
                "https://app.example.test/%20/evil.example",
            ),
            (
                "/ \\evil.example",
                "https://app.example.test/%20/evil.example",
            ),
            (
                "/%2f%2fevil.example",
                "https://app.example.test/%2f%2fevil.example",
            ),
            (
                "/%5cevil.example",
                "https://app.example.test/%5cevil.example",
            ),
            ("/.evil.example", "https://app.example.test/.evil.example"),
            (
                "/%09/evil.example",
                "https://app.example.test/%09/evil.example",
            ),
            // Go's parser saw host evil.example here; browsers (and WHATWG) see this app.
            (
                "https://app.example.test\\@evil.example",
                "https://app.example.test/@evil.example",
            ),
            (
                "/https://evil.example",
                "https://app.example.test/https://evil.example",
            ),
        ];
        for (rd, want) in neutralised {
            assert_eq!(check(rd).as_deref(), Some(want), "{rd:?}");
        }
    }

    #[test]
    fn sec_1_refuses_the_payload_corpus() {
        // One payload per line; written for this project from the public open-redirect payload
        // families. Each is tried as sent (query-decoded once) and raw.
        let corpus = include_str!("../tests/data/open-redirects.txt");
        let mut n = 0;
        for line in corpus
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let once: String =
                url::form_urlencoded::parse(format!("rd={}", line.replace('+', "%2B")).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
            for rd in [line, once.as_str()] {
                if let Some(u) = check(rd) {
                    // Accepted only if it stays on a configured origin.
                    let o = origin_of(&Url::parse(&u).unwrap()).unwrap();
                    assert!(allowed().contains(&o), "{rd:?} escaped to {u}");
                }
            }
            n += 1;
        }
        assert!(n > 100, "corpus too small: {n}");
    }

    #[test]
    fn sec_2_emits_the_reserialised_url_without_control_bytes() {
        // Spaces, quotes and non-ASCII come back percent-encoded; CR/LF/NUL were refused above.
        let u = check("/a b/\"x\"/é?q=<1>").unwrap();
        assert_eq!(u, "https://app.example.test/a%20b/%22x%22/%C3%A9?q=%3C1%3E");
        assert!(!u.bytes().any(|b| b.is_ascii_control()));
        // The raw input is never echoed: a decoded-twice form is still just a path.
        assert_eq!(
            check("/%2f%2fevil.example").as_deref(),
            Some("https://app.example.test/%2f%2fevil.example")
        );
    }

    #[test]
    fn sec_5_the_first_rd_wins() {
        assert_eq!(
            rd_param(Some("rd=%2Fa&rd=https%3A%2F%2Fevil.example")).as_deref(),
            Some("/a")
        );
        assert_eq!(rd_param(Some("x=1&rd=%2Fb")).as_deref(), Some("/b"));
        assert_eq!(rd_param(Some("x=1")), None);
        assert_eq!(rd_param(None), None);
        // Decoded exactly once.
        assert_eq!(
            rd_param(Some("rd=%252F%252Fevil.example")).as_deref(),
            Some("%2F%2Fevil.example")
        );
    }

    #[test]
    fn with_rd_round_trips() {
        let target = "https://app.example.test/a b?c=d&e=f#g";
        let s = with_rd("https://app.example.test/.otpgate/login", target);
        assert_eq!(
            rd_param(s.split_once('?').map(|(_, q)| q)).as_deref(),
            Some(target)
        );
    }

    proptest! {
        #[test]
        fn sec_1_never_leaves_the_configured_origins(rd in "[ -~\\t\\r\\n\\\\]{0,60}") {
            if let Some(u) = validate(&rd, &app(), &allowed()) {
                let o = origin_of(&u).unwrap();
                prop_assert!(allowed().contains(&o));
                prop_assert!(u.username().is_empty() && u.password().is_none());
                prop_assert!(!u.as_str().bytes().any(|b| b.is_ascii_control()));
            }
        }

        #[test]
        fn sec_1_paths_stay_on_the_current_app(path in "/[a-zA-Z0-9/._~%-]{0,40}") {
            if let Some(u) = validate(&path, &app(), &allowed()) {
                prop_assert_eq!(origin_of(&u).unwrap(), app());
            }
        }
    }
}
