use std::path::Path;

use super::*;

pub(super) fn load_text(text: &str) -> Result<Loaded, ConfigError> {
    load_str(
        text,
        Path::new("/etc/otpgate/otpgate.yaml"),
        Vec::<(String, String)>::new(),
    )
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match load_text(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

pub(super) const MINIMAL: &str = "
version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: app
    hosts: [app.localhost]
    upstream: http://127.0.0.1:3000
    policies:
      - { name: all, action: allow, include: [ { everyone: true } ] }
";

#[test]
fn minimal_config_loads_with_defaults() {
    let l = load_text(MINIMAL).unwrap();
    let c = &l.config;
    assert_eq!(c.listen.http, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(c.listen.https, None);
    assert_eq!(c.data_dir, Path::new("/etc/otpgate/data"));
    assert_eq!(
        c.session.keys_file,
        Path::new("/etc/otpgate/data/keys.json")
    );
    assert_eq!(c.session.duration, std::time::Duration::from_secs(86400));
    assert_eq!(c.apps[0].timeout, std::time::Duration::from_secs(30));
    assert_eq!(c.apps[0].login_methods, vec![LoginMethod::OneTimePin]);
    assert_eq!(c.identity_providers.pin.as_ref().unwrap().length, 6);
    assert_eq!(c.rate_limits.code_sends_per_address.to_string(), "3/15m");
    assert_eq!(
        c.mail.transport,
        MailTransport::Outbox("/etc/otpgate/data/outbox".into())
    );
    assert_eq!(
        c.audit,
        AuditSink::File("/etc/otpgate/data/audit.log".into())
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn unknown_selector_is_reported_with_its_key_path() {
    let errs = errors(
        "
version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: a
    hosts: [a.localhost]
    upstream: builtin:echo
    policies: [ { name: p, action: allow, include: [ { everyone: true } ] } ]
  - name: b
    hosts: [b.localhost]
    upstream: builtin:echo
    policies:
      - name: p
        action: allow
        include: [ { everyone: true }, { email: a@b.example }, { emial: x@y.example } ]
",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("apps[1].policies[0].include[2]: unknown selector \"emial\""),
        "{}",
        errs[0]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let errs = errors(
        "
version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: a
    hosts: [a.localhost]
    upstrem: http://x
  - name: b
    hosts: ['http://b.localhost:80']
    upstream: ftp://x
    timeout: 5
    policies:
      - { name: p, action: alow, include: [ { everyone: true } ] }
      - { name: q, action: bypass, include: [ { email: a@b.example } ] }
      - { name: r, action: allow }
      - { name: s, action: allow, paths: [/a/../b], include: [ { ip: 10.0.0.0/33 } ] }
identity_providers:
  - { type: onetimepin, config: { length: 4, ttl: 15m, max_attempts: 11 } }
  - { type: onetimetoken, config: { reissue_after: 1h, min_password_length: 6 } }
",
    );
    let joined = errs.join("\n");
    for want in [
        "apps[0].upstrem: unknown field `upstrem`",
        "apps[1].timeout: invalid type",
        "identity_providers[0].config.length: must be between 6 and 10",
        "identity_providers[0].config.ttl: must be at most 10m",
        "identity_providers[0].config.max_attempts: must be between 1 and 10",
        "identity_providers[1].config.reissue_after: must be at least 24h",
        "identity_providers[1].config.min_password_length: must be between 8 and 64",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    // apps[1] failed to deserialise (timeout), so its policies are not looked at; fix that and
    // the policy problems appear together.
    let errs = errors(
        "
version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: b
    hosts: ['http://b.localhost:80']
    upstream: ftp://x
    policies:
      - { name: p, action: alow, include: [ { everyone: true } ] }
      - { name: q, action: bypass, include: [ { email: a@b.example } ] }
      - { name: r, action: allow }
      - { name: s, action: allow, paths: [/a/../b], include: [ { ip: 10.0.0.0/33 } ] }
      - { name: s, action: allow, include: [ { everyone: false } ] }
",
    );
    let joined = errs.join("\n");
    for want in [
        "apps[0].hosts[0]: \"http://b.localhost:80\": write the host name only",
        "apps[0].upstream: expected http://, https:// or builtin:echo",
        "apps[0].policies[0].action: unknown action \"alow\"",
        "apps[0].policies[1].include[0]: bypass policies apply without a login",
        "apps[0].policies[2].include: required on allow policies",
        "apps[0].policies[3].paths[0]: dot segment in path",
        "apps[0].policies[3].include[0]: expected an address or CIDR",
        "apps[0].policies[4].name: policy \"s\" is defined twice",
        "apps[0].policies[4].include[0]: everyone: false matches nobody",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

#[test]
fn version_and_unknown_top_level_keys() {
    let errs = errors("version: 2\nlisten: { http: 127.0.0.1:1 }\n");
    assert_eq!(errs, ["version: this build reads version 1, found 2"]);
    let errs = errors("version: 1\nlistn: {}\n");
    assert!(
        errs[0].starts_with("listn: unknown field `listn`")
            || errs[0].contains("unknown field `listn`"),
        "{errs:?}"
    );
    let errs = errors("listen: { http: 127.0.0.1:1 }\n");
    assert!(errs[0].contains("missing field `version`"), "{errs:?}");
    let errs = errors("- a\n- b\n");
    assert!(errs[0].contains("expected a mapping"), "{errs:?}");
    let errs = errors("version: 1\nlisten: { http: [unclosed\n");
    assert!(errs[0].contains("otpgate.yaml"), "{errs:?}");
}

#[test]
fn env_overrides_apply_and_name_the_variable() {
    let env = vec![
        (
            "OTPGATE_APPS__0__UPSTREAM".to_owned(),
            "builtin:echo".to_owned(),
        ),
        ("OTPGATE_SESSION__DURATION".to_owned(), "8h".to_owned()),
        ("OTPGATE_LOG__FORMAT".to_owned(), "json".to_owned()),
    ];
    let l = load_str(MINIMAL, Path::new("x/otpgate.yaml"), env).unwrap();
    assert_eq!(l.config.apps[0].upstream, Upstream::Echo);
    assert_eq!(
        l.config.session.duration,
        std::time::Duration::from_secs(8 * 3600)
    );
    assert_eq!(l.config.log.format, LogFormat::Json);

    let env = vec![("OTPGATE_SESSION__DURATION".to_owned(), "forever".to_owned())];
    let e = load_str(MINIMAL, Path::new("x/otpgate.yaml"), env).unwrap_err();
    assert!(
        e.errors[0]
            .to_string()
            .contains("(set by OTPGATE_SESSION__DURATION)"),
        "{:?}",
        e.errors
    );
    let env = vec![("OTPGATE_SESION__DURATION".to_owned(), "1h".to_owned())];
    let e = load_str(MINIMAL, Path::new("x/otpgate.yaml"), env).unwrap_err();
    assert!(
        e.errors[0].to_string().contains("unknown field `sesion`"),
        "{:?}",
        e.errors
    );
}

#[test]
fn secrets_come_from_files_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/admin-token"),
        "0123456789abcdef-token\n",
    )
    .unwrap();
    let text = format!("{MINIMAL}admin: {{ token_file: secrets/admin-token }}\n");
    let l = load_str(
        &text,
        &dir.path().join("otpgate.yaml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    assert_eq!(
        l.config.admin.token.as_ref().unwrap().expose(),
        "0123456789abcdef-token"
    );
    assert!(!format!("{:?}", l.config).contains("0123456789abcdef-token"));

    let text = format!("{MINIMAL}admin: {{ token_file: secrets/missing }}\n");
    let e = load_str(
        &text,
        &dir.path().join("otpgate.yaml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap_err();
    assert!(
        e.errors[0]
            .to_string()
            .starts_with("admin.token_file: cannot read"),
        "{:?}",
        e.errors
    );
}

#[test]
fn missing_certificate_file_is_an_error() {
    let text = "
version: 1
listen: { https: 127.0.0.1:8443 }
tls: { certificates: [ { cert: certs/nope.pem, key: certs/nope-key.pem } ] }
";
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("tls.certificates[0].cert: cannot read /etc/otpgate/certs/nope.pem")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tls.certificates[0].key: cannot read")),
        "{errs:?}"
    );
    let errs = errors("version: 1\nlisten: { https: 127.0.0.1:8443 }\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tls: listen.https needs tls.certificates")),
        "{errs:?}"
    );
}

#[test]
fn warns_about_apps_nobody_can_enter_and_plain_http() {
    let l = load_text(
        "
version: 1
listen: { http: 0.0.0.0:8080 }
apps:
  - name: a
    hosts: [a.corp.example]
    upstream: builtin:echo
    policies:
      - { name: deny, action: block, include: [ { everyone: true } ] }
      - { name: staff, action: allow, include: [ { email_domain: corp.example } ] }
",
    )
    .unwrap();
    let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.iter()
            .any(|x| x == "apps[0].policies: no policy of app \"a\" can ever allow anyone"),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|x| x.starts_with("apps[0].public_url: plain http outside localhost")),
        "{w:?}"
    );
}

#[test]
fn not_yet_available_features_are_refused_not_ignored() {
    let errs = errors(&format!("{MINIMAL}portal_host: gw.example.test\n"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("portal_host: ") && e.contains("not available")),
        "{errs:?}"
    );
}

#[test]
fn portal_url_must_be_served_by_the_gateway_and_not_an_app_host() {
    let ok = load_text(&format!(
        "{MINIMAL}portal_url: http://auth.localhost:8080\n"
    ))
    .unwrap();
    assert_eq!(
        ok.config
            .portal
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("http://auth.localhost:8080")
    );
    assert!(ok.config.apps[0].launcher);
    assert!(load_text(MINIMAL).unwrap().config.portal.is_none());
    for (snippet, says) in [
        ("portal_url: https://auth.localhost", "no https listener"),
        (
            "portal_url: http://auth.localhost:9000",
            "listener is on port 8080",
        ),
        (
            "portal_url: http://app.localhost:8080",
            "is a host of app \"app\"",
        ),
        (
            "portal_url: http://auth.localhost:8080/login",
            "origin only",
        ),
    ] {
        let errs = errors(&format!("{MINIMAL}{snippet}\n"));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("portal_url: ") && e.contains(says)),
            "{snippet}: {errs:?}"
        );
    }
    // Behind a trusted front proxy the listener's scheme and port are the proxy's business.
    let proxied =
        format!("{MINIMAL}portal_url: https://auth.example.test\ntrusted_proxies: [10.0.0.1]\n");
    assert!(load_text(&proxied).unwrap().config.portal.is_some());
}

#[test]
fn state_takes_redis_urls_and_refuses_passwords_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis-pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    for snippet in [
        "state: memory".to_owned(),
        "state: redis://127.0.0.1:6379/0".to_owned(),
        "state: rediss://cache.example.test".to_owned(),
        "state: redis+sentinel://s1:26379,s2:26379/mymaster/0".to_owned(),
        format!("state: {{ url: \"redis://otpgate@cache:6379\", password_file: {pw:?} }}"),
    ] {
        let loaded = load_text(&format!("{MINIMAL}{snippet}\n"));
        assert!(
            loaded.is_ok(),
            "{snippet}: {:?}",
            loaded.err().map(|e| e.errors)
        );
    }
    for (snippet, says) in [
        ("state: redis://:hunter2@cache:6379", "password_file"),
        ("state: redis://otpgate@cache:6379", "password_file"),
        ("state: redis+sentinel://s1:26379", "names the primary"),
        (
            "state: { url: redis://cache, password_file: /nonexistent/pw }",
            "cannot read",
        ),
        ("state: memcached://cache", "expected memory"),
    ] {
        let errs = errors(&format!("{MINIMAL}{snippet}\n"));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("state") && e.contains(says)),
            "{snippet}: {errs:?}"
        );
        assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
    }
}

#[test]
fn sec_43_credentials_take_postgres_urls_and_refuse_passwords_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pg-pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    for snippet in [
        "credentials: embedded".to_owned(),
        "credentials: postgres://otpgate@127.0.0.1:5432/otpgate?sslmode=disable".to_owned(),
        "credentials: postgresql://otpgate@db.example.test/gate".to_owned(),
        format!(
            "credentials: {{ url: \"postgres://otpgate@db:5432/gate?sslmode=require\", password_file: {pw:?} }}"
        ),
    ] {
        let loaded = load_text(&format!("{MINIMAL}{snippet}\n"));
        let loaded = loaded.unwrap_or_else(|e| panic!("{snippet}: {:?}", e.errors));
        if snippet.contains("password_file") {
            let CredentialsConfig::Postgres(p) = &loaded.config.credentials else {
                panic!("{snippet}: not postgres");
            };
            assert_eq!(p.password.as_ref().map(|s| s.expose()), Some("s3cret"));
            assert_eq!(p.ssl_mode, PgSslMode::Require);
        }
    }
    // Plain TCP off loopback is allowed, with a warning.
    let loaded = load_text(&format!(
        "{MINIMAL}credentials: postgres://u@db.example.test/gate?sslmode=disable\n"
    ))
    .unwrap();
    assert!(
        loaded.warnings.iter().any(|w| w
            .to_string()
            .starts_with("credentials.url: sslmode=disable")),
        "{:?}",
        loaded.warnings
    );
    for (snippet, says) in [
        (
            "credentials: postgres://otpgate:hunter2@db/gate",
            "password_file",
        ),
        (
            "credentials: postgres://otpgate@db/gate?password=hunter2",
            "password_file",
        ),
        ("credentials: postgres://db/gate", "role"),
        (
            "credentials: { url: postgres://u@db/gate, password_file: /nonexistent/pw }",
            "cannot read",
        ),
        ("credentials: mysql://u@db/gate", "expected embedded"),
        ("credentials: postgres://u@db/gate?sslmode=allow", "sslmode"),
    ] {
        let errs = errors(&format!("{MINIMAL}{snippet}\n"));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("credentials") && e.contains(says)),
            "{snippet}: {errs:?}"
        );
        assert!(!errs.iter().any(|e| e.contains("hunter2")), "{errs:?}");
    }
}

#[test]
fn host_patterns() {
    use validate::policies::parse_host_pattern as p;
    assert_eq!(
        p("App.Example.Test"),
        Ok(HostPattern::Exact("app.example.test".into()))
    );
    assert_eq!(
        p("*.corp.example"),
        Ok(HostPattern::Wildcard("corp.example".into()))
    );
    assert_eq!(p("[::1]"), Ok(HostPattern::Exact("::1".into())));
    assert_eq!(p("127.0.0.1"), Ok(HostPattern::Exact("127.0.0.1".into())));
    assert!(p("app.example:8443").is_err());
    assert!(p("*.example").is_err());
    assert!(p("a..b").is_err());
    assert!(p("-a.b").is_err());
}

#[test]
fn origins() {
    let o = Origin::parse("https://App.Example.Test").unwrap();
    assert_eq!(
        (o.https, o.host.as_str(), o.port),
        (true, "app.example.test", 443)
    );
    assert_eq!(o.to_string(), "https://app.example.test");
    let o = Origin::parse("http://localhost:8080/").unwrap();
    assert_eq!(o.to_string(), "http://localhost:8080");
    assert_eq!(
        Origin::parse("https://[::1]:8443").unwrap().authority(),
        "[::1]:8443"
    );
    assert!(Origin::parse("https://u:p@x.example").is_err());
    assert!(Origin::parse("https://x.example/path").is_err());
    assert!(Origin::parse("ftp://x.example").is_err());
}

#[test]
fn smtp_transports() {
    let l = load_text(&format!(
        "{MINIMAL}mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://mailer%40corp@relay.corp.example' }}\n"
    ))
    .unwrap();
    assert_eq!(
        l.config.mail.transport,
        MailTransport::Smtp {
            host: "relay.corp.example".into(),
            port: 587,
            username: Some("mailer@corp".into()),
            tls: SmtpTls::StartTls
        }
    );
    let l = load_text(&format!(
        "{MINIMAL}mail: {{ from: g@corp.example, transport: 'smtps://relay.corp.example' }}\n"
    ))
    .unwrap();
    assert!(matches!(
        l.config.mail.transport,
        MailTransport::Smtp {
            port: 465,
            tls: SmtpTls::Implicit,
            ..
        }
    ));
    let l = load_text(&format!(
        "{MINIMAL}mail: {{ from: g@corp.example, transport: 'smtp://127.0.0.1:2525?tls=none' }}\n"
    ))
    .unwrap();
    assert!(matches!(
        l.config.mail.transport,
        MailTransport::Smtp {
            port: 2525,
            tls: SmtpTls::None,
            ..
        }
    ));
    let errs = errors(&format!(
        "{MINIMAL}mail: {{ transport: 'smtp://u:pw@relay.corp.example' }}\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("do not put the password in the URL")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("mail.from: required")),
        "{errs:?}"
    );
    let errs = errors(&format!(
        "{MINIMAL}mail: {{ from: \"Evil\\r\\nBcc: x <g@corp.example>\" }}\n"
    ));
    assert!(errs.iter().any(|e| e.starts_with("mail.from:")), "{errs:?}");
}

#[test]
fn committed_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["config/otpgate.yaml", "config/otpgate.example.yaml"] {
        let l = load(&root.join(f), Vec::<(String, String)>::new());
        assert!(l.is_ok(), "{f}: {:?}", l.err());
    }
}

#[test]
fn upstream_protocol_defaults_to_http1_and_rejects_unknown_names() {
    let l = load_text(MINIMAL).unwrap();
    assert_eq!(l.config.apps[0].upstream_protocol, UpstreamProtocol::Http1);
    for (text, want) in [
        ("http1", UpstreamProtocol::Http1),
        ("http2", UpstreamProtocol::Http2),
        ("auto", UpstreamProtocol::Auto),
    ] {
        let yaml = MINIMAL.replace(
            "    upstream: http://127.0.0.1:3000\n",
            &format!("    upstream: https://127.0.0.1:3000\n    upstream_protocol: {text}\n"),
        );
        let l = load_text(&yaml).unwrap();
        assert_eq!(l.config.apps[0].upstream_protocol, want);
    }
    let errs = errors(&MINIMAL.replace(
        "    upstream: http://127.0.0.1:3000\n",
        "    upstream: http://127.0.0.1:3000\n    upstream_protocol: h3\n",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("apps[0].upstream_protocol") && e.contains("http1, http2 or auto")),
        "{errs:?}"
    );
}
