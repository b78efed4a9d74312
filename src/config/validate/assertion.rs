//! `identity_assertion`: the header name, the token lifetime and the signing-keys file.

use std::path::Path;
use std::time::Duration;

use super::super::{
    AssertionConfig, DEFAULT_ASSERTION_HEADER as DEFAULT_HEADER,
    MAX_ASSERTION_LIFETIME as MAX_LIFETIME,
};
use super::{Ctx, MINUTE, file};

/// Headers the assertion must not take the place of: the ones hygiene, routing, sessions and
/// the other identity headers depend on.
const RESERVED: [&str; 12] = [
    "host",
    "cookie",
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "forwarded",
    "upgrade",
    "x-otpgate-email",
    "x-otpgate-user",
    "x-otpgate-groups",
];

pub(super) fn identity_assertion(
    c: &mut Ctx<'_>,
    f: &file::IdentityAssertionFile,
    session_keys: &Path,
) -> Option<AssertionConfig> {
    let header = f.header.as_deref().unwrap_or(DEFAULT_HEADER);
    let header = match http::HeaderName::from_bytes(header.as_bytes()) {
        Ok(h) if RESERVED.contains(&h.as_str()) || h.as_str().starts_with("x-forwarded-") => {
            c.err(
                "identity_assertion.header",
                format!("{h} is a header the gateway sets or reads itself"),
            );
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            c.err("identity_assertion.header", "must be a valid header name");
            None
        }
    };
    let lifetime = f.lifetime.unwrap_or(MAX_LIFETIME);
    if !(MINUTE..=MAX_LIFETIME).contains(&lifetime) {
        c.err(
            "identity_assertion.lifetime",
            "must be between 1m and 5m (docs/security.md#34)",
        );
    }
    let keys_file = f.keys_file.as_deref().map_or_else(
        || session_keys.with_file_name("jwt_keys.json"),
        |p| c.resolve(p),
    );
    if keys_file == session_keys {
        c.err(
            "identity_assertion.keys_file",
            "must not be session.keys_file",
        );
    }
    let config = AssertionConfig {
        header: header?,
        lifetime: lifetime.min(MAX_LIFETIME).max(Duration::from_secs(1)),
        keys_file,
    };
    f.enabled.unwrap_or(true).then_some(config)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Loaded, load_str};

    fn load(head: &str, app_extra: &str) -> Result<Loaded, Vec<String>> {
        let text = format!(
            "version: 1
listen: {{ http: 127.0.0.1:8080 }}
{head}
apps:
  - name: wiki
    hosts: [wiki.localhost]
    upstream: http://127.0.0.1:3000
{app_extra}    policies:
      - {{ name: all, action: allow, include: [ {{ everyone: true }} ] }}
"
        );
        load_str(
            &text,
            Path::new("/etc/otpgate/otpgate.yaml"),
            Vec::<(String, String)>::new(),
        )
        .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_assertion_is_on_by_default_with_its_keys_beside_the_cookie_keys() {
        let c = load("session: { keys_file: /var/lib/otpgate/keys.json }", "")
            .unwrap()
            .config;
        let a = c.identity_assertion.unwrap();
        assert_eq!(a.header, "otpgate-jwt-assertion");
        assert_eq!(a.lifetime, Duration::from_secs(300));
        assert_eq!(a.keys_file, Path::new("/var/lib/otpgate/jwt_keys.json"));
        assert_eq!(c.apps[0].audience, "otpgate:app:wiki");
    }

    #[test]
    fn the_header_lifetime_keys_file_and_audience_can_be_set() {
        let c = load(
            "identity_assertion: { header: X-Identity, lifetime: 2m, keys_file: jwt.json }",
            "    audience: https://wiki.example.org\n",
        )
        .unwrap()
        .config;
        let a = c.identity_assertion.unwrap();
        assert_eq!(a.header, "x-identity");
        assert_eq!(a.lifetime, Duration::from_secs(120));
        assert_eq!(a.keys_file, Path::new("/etc/otpgate/jwt.json"));
        assert_eq!(c.apps[0].audience, "https://wiki.example.org");
        let off = load("identity_assertion: { enabled: false }", "").unwrap();
        assert!(off.config.identity_assertion.is_none());
    }

    #[test]
    fn long_lifetimes_reserved_headers_and_blank_audiences_are_refused() {
        for (head, app, key) in [
            (
                "identity_assertion: { lifetime: 10m }",
                "",
                "identity_assertion.lifetime",
            ),
            (
                "identity_assertion: { lifetime: 30s }",
                "",
                "identity_assertion.lifetime",
            ),
            (
                "identity_assertion: { header: Cookie }",
                "",
                "identity_assertion.header",
            ),
            (
                "identity_assertion: { header: X-Otpgate-User }",
                "",
                "identity_assertion.header",
            ),
            (
                "identity_assertion: { header: 'a b' }",
                "",
                "identity_assertion.header",
            ),
            (
                "session: { keys_file: k.json }\nidentity_assertion: { keys_file: k.json }",
                "",
                "identity_assertion.keys_file",
            ),
            ("", "    audience: 'two words'\n", "apps[0].audience"),
            ("", "    audience: ''\n", "apps[0].audience"),
        ] {
            let errors = load(head, app).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(key)),
                "{head} {app}: {errors:?}"
            );
        }
    }
}
