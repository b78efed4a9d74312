//! `service_tokens`, `service_token_key_file` and `service_token_headers`.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderName;

use super::super::service_token::{
    CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, HASH_PREFIX, ServiceTokenConfig, ServiceTokenSettings,
    TokenSecret,
};
use super::{Ctx, file};

/// Shortest secret accepted from a `secret_file`: the generated ones are 64 hex digits.
const MIN_SECRET_LEN: usize = 32;

pub(super) fn service_tokens(
    c: &mut Ctx<'_>,
    list: Vec<file::ServiceTokenFile>,
    key_file: Option<&str>,
    headers: &file::ServiceTokenHeadersFile,
    data_dir: &std::path::Path,
) -> ServiceTokenSettings {
    let key_file = key_file.map_or_else(|| data_dir.join("service-token.key"), |f| c.resolve(f));
    let client_id_header = header(
        c,
        "client_id",
        headers.client_id.as_deref(),
        CLIENT_ID_HEADER,
    );
    let client_secret_header = header(
        c,
        "client_secret",
        headers.client_secret.as_deref(),
        CLIENT_SECRET_HEADER,
    );
    if client_id_header == client_secret_header {
        c.err("service_token_headers", "the two headers must differ");
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut tokens = Vec::new();
    for (i, t) in list.into_iter().enumerate() {
        let at = format!("service_tokens[{i}]");
        if let Some(t) = token(c, &at, t, &mut names, &mut ids) {
            tokens.push(t);
        }
    }
    let key = if tokens.is_empty() {
        None
    } else {
        read_key(c, &key_file)
    };
    ServiceTokenSettings {
        key_file,
        key,
        client_id_header,
        client_secret_header,
        tokens,
    }
}

fn header(c: &mut Ctx<'_>, key: &str, value: Option<&str>, default: &str) -> HeaderName {
    let text = value.unwrap_or(default);
    HeaderName::from_bytes(text.as_bytes()).unwrap_or_else(|_| {
        c.err(
            format!("service_token_headers.{key}"),
            format!("{text:?} is not a header name"),
        );
        HeaderName::from_static(if key == "client_id" {
            CLIENT_ID_HEADER
        } else {
            CLIENT_SECRET_HEADER
        })
    })
}

fn token(
    c: &mut Ctx<'_>,
    at: &str,
    t: file::ServiceTokenFile,
    names: &mut HashSet<String>,
    ids: &mut HashSet<String>,
) -> Option<ServiceTokenConfig> {
    let before = c.errors.len();
    let name_ok = !t.name.is_empty()
        && t.name.len() <= 64
        && t.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        c.err(
            format!("{at}.name"),
            "must be 1 to 64 letters, digits, '-', '_' or '.'",
        );
    } else if !names.insert(t.name.clone()) {
        c.err(
            format!("{at}.name"),
            format!("service token {:?} is defined twice", t.name),
        );
    }
    let id_ok = (8..=128).contains(&t.client_id.len())
        && t.client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !id_ok {
        c.err(
            format!("{at}.client_id"),
            "must be 8 to 128 letters, digits, '-', '_' or '.'",
        );
    } else if !ids.insert(t.client_id.clone()) {
        c.err(
            format!("{at}.client_id"),
            "another service token has this client id",
        );
    }
    let secrets = secrets(c, at, &t);
    let expires = t.expires.as_deref().and_then(|e| expiry(c, at, e));
    (c.errors.len() == before).then_some(ServiceTokenConfig {
        name: t.name,
        client_id: t.client_id,
        secrets,
        expires,
    })
}

/// The token's valid secrets: one, or two while a rotation is under way.
fn secrets(c: &mut Ctx<'_>, at: &str, t: &file::ServiceTokenFile) -> Vec<TokenSecret> {
    let mut hashes: Vec<(String, &str)> = match &t.secret_hash {
        None => vec![],
        Some(file::OneOrMany::One(h)) => vec![(format!("{at}.secret_hash"), h.as_str())],
        Some(file::OneOrMany::Many(v)) => v
            .iter()
            .enumerate()
            .map(|(k, h)| (format!("{at}.secret_hash[{k}]"), h.as_str()))
            .collect(),
    };
    if let Some(h) = &t.previous_secret_hash {
        hashes.push((format!("{at}.previous_secret_hash"), h.as_str()));
    }
    let mut out = Vec::new();
    for (path, h) in hashes {
        match parse_hash(h) {
            Some(b) => out.push(TokenSecret::Hash(b)),
            None => c.err(
                path,
                format!("expected {HASH_PREFIX} and 64 hex digits (as `otpgate service-token create` prints)"),
            ),
        }
    }
    if let Some(f) = &t.secret_file
        && let Some(s) = c.secret(at, Some(f), None, "secret_file", "secret")
    {
        if s.expose().len() < MIN_SECRET_LEN {
            c.err(
                format!("{at}.secret_file"),
                format!("the secret must be at least {MIN_SECRET_LEN} characters (256 random bits as 64 hex digits)"),
            );
        }
        out.push(TokenSecret::Plain(s));
    }
    if out.is_empty() {
        c.err(at, "needs secret_hash or secret_file");
    } else if out.len() > 2 {
        c.err(
            at,
            "at most two valid secrets (the new and the previous one during a rotation)",
        );
    }
    out
}

/// Parses `hmac-sha256:<64 hex digits>` (a `secret_hash`).
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.trim().strip_prefix(HASH_PREFIX)?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// An RFC 3339 time, as a duration since the Unix epoch.
fn expiry(c: &mut Ctx<'_>, at: &str, text: &str) -> Option<Duration> {
    let parsed =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339);
    match parsed {
        Ok(t) if t.unix_timestamp() > 0 => {
            let nanos = u64::try_from(t.unix_timestamp_nanos()).unwrap_or(u64::MAX);
            Some(Duration::from_nanos(nanos))
        }
        _ => {
            c.err(
                format!("{at}.expires"),
                format!("expected an RFC 3339 time like 2027-03-01T00:00:00Z, found {text:?}"),
            );
            None
        }
    }
}

/// The hash key; tokens cannot be checked without it.
fn read_key(c: &mut Ctx<'_>, path: &std::path::Path) -> Option<super::Secret> {
    let at = "service_token_key_file";
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(b) if b.len() == 32 => Some(super::Secret::new(text)),
                _ => {
                    c.err(
                        at,
                        format!("{} must hold 32 bytes in base64", path.display()),
                    );
                    None
                }
            }
        }
        Err(e) => {
            c.err(
                at,
                format!(
                    "cannot read {}: {e} (`otpgate service-token create` makes it; copy it to every replica)",
                    path.display()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, TokenSecret, load_str};

    const H1: &str = "hmac-sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "hmac-sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A config with `tokens` under `service_tokens:` and `policies` on one app; the key file
    /// exists in a temporary folder.
    fn load(tokens: &str, policies: &str) -> (Result<Config, Vec<String>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("data/service-token.key"),
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("secret.txt"),
            format!("{}\n", "a".repeat(64)),
        )
        .unwrap();
        let text = format!(
            "version: 1\nlisten: {{ http: 127.0.0.1:8080 }}\nservice_tokens:\n{tokens}\napps:\n  - name: app\n    hosts: [app.localhost]\n    upstream: builtin:echo\n    policies:\n{policies}\n"
        );
        let r = load_str(&text, &dir.path().join("otpgate.yaml"), Vec::new())
            .map(|l| l.config)
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect());
        (r, dir)
    }

    const SVC: &str =
        "      - { name: svc, action: service_auth, include: [ { service_token: ci } ] }";

    #[test]
    fn a_token_with_two_hashes_a_file_and_an_expiry_loads() {
        let (c, _d) = load(
            &format!(
                "  - {{ name: ci, client_id: 0123456789abcdef, secret_hash: {H1}, previous_secret_hash: {H2}, expires: \"2030-01-01T00:00:00Z\" }}\n  - {{ name: job, client_id: fedcba9876543210, secret_file: secret.txt }}"
            ),
            SVC,
        );
        let c = c.unwrap();
        let t = &c.service_tokens.tokens;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].secrets.len(), 2);
        assert_eq!(t[0].expires.unwrap().as_secs(), 1_893_456_000);
        assert!(matches!(t[1].secrets[0], TokenSecret::Plain(_)));
        assert!(c.service_tokens.key.is_some());
        assert_eq!(c.service_tokens.client_id_header, "otpgate-client-id");
    }

    #[test]
    fn token_problems_are_reported_with_their_key_paths() {
        let (c, _d) = load(
            &format!(
                "  - {{ name: ci, client_id: short, secret_hash: [{H1}, {H2}], previous_secret_hash: {H1}, expires: tomorrow }}\n  - {{ name: bad, client_id: 0123456789abcdef, secret_hash: sha256:00 }}"
            ),
            "      - { name: all, action: bypass }",
        );
        let errs = c.unwrap_err().join("\n");
        for want in [
            "service_tokens[0].client_id: must be 8 to 128",
            "service_tokens[0]: at most two valid secrets",
            "service_tokens[0].expires: expected an RFC 3339 time",
            "service_tokens[1].secret_hash: expected hmac-sha256:",
        ] {
            assert!(errs.contains(want), "{want:?} not in {errs}");
        }
    }

    #[test]
    fn selectors_and_actions_that_can_never_match_are_refused() {
        let (c, _d) = load(
            &format!("  - {{ name: ci, client_id: 0123456789abcdef, secret_hash: {H1} }}"),
            "      - { name: a, action: service_auth, include: [ { email_domain: corp.example } ] }
      - { name: b, action: allow, include: [ { any_service_token: true } ] }
      - { name: c, action: service_auth, include: [ { service_token: nope } ] }
      - { name: d, action: bypass, include: [ { service_token: ci } ] }",
        );
        let errs = c.unwrap_err().join("\n");
        for want in [
            "policies[0].include[0]: service_auth policies match service tokens, never people",
            "policies[1].include[0]: allow policies decide people",
            "policies[2].include[0]: no service token named \"nope\"",
            "policies[3].include[0]: bypass policies apply without a login",
        ] {
            assert!(errs.contains(want), "{want:?} not in {errs}");
        }
    }

    #[test]
    fn tokens_without_the_key_file_are_an_error_that_says_how_to_make_it() {
        let (_, dir) = load("", "      - { name: all, action: bypass }");
        let text = format!(
            "version: 1\nlisten: {{ http: 127.0.0.1:8080 }}\nservice_token_key_file: missing.key\nservice_tokens:\n  - {{ name: ci, client_id: 0123456789abcdef, secret_hash: {H1} }}\napps: []\n"
        );
        let errs = load_str(&text, &dir.path().join("otpgate.yaml"), Vec::new())
            .unwrap_err()
            .errors;
        assert!(
            errs.iter().any(|e| e.path == "service_token_key_file"
                && e.message.contains("otpgate service-token create")),
            "{errs:?}"
        );
        assert!(
            Path::new(&dir.path().join("missing.key"))
                .exists()
                .eq(&false)
        );
    }
}
