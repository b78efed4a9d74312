//! `otpgate service-token create` and `rotate` through the binary: the credentials they print
//! once work against a running gateway, and what they ask to paste holds no secret.

use super::*;

const CONFIG: &str = "version: 1
listen: { http: 127.0.0.1:8080 }
audit: { path: data/audit.log }
apps:
  - name: api
    hosts: [api.test]
    public_url: http://api.test
    upstream: builtin:echo
    policies:
      - { name: machines, action: service_auth, include: [ { service_token: loadtest } ] }
service_tokens:
";

/// `Name: value` from one output line.
fn header_line<'a>(line: Option<&'a str>, name: &str) -> &'a str {
    let line = line.unwrap_or_else(|| panic!("no {name} line"));
    line.strip_prefix(&format!("{name}: "))
        .unwrap_or_else(|| panic!("{line:?} is not the {name} line"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_29_created_and_rotated_credentials_work_against_the_running_binary_and_the_yaml_holds_no_secret()
 {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        CONFIG.replace("service_token: loadtest", "everyone: true"),
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let out = otpgate(&[
        "--config",
        cfg_arg,
        "service-token",
        "create",
        "loadtest",
        "--expires",
        "90d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let id = header_line(lines.next(), "Otpgate-Client-Id").to_owned();
    let secret = header_line(lines.next(), "Otpgate-Client-Secret").to_owned();
    assert_eq!(secret.len(), 64, "256 random bits as hex");
    // The list item to paste: everything from its `- name:` line on, holding no secret.
    let item: String = text
        .lines()
        .skip_while(|l| !l.starts_with("  - name: loadtest"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(item.contains(&format!("client_id: {id}")), "{text}");
    assert!(item.contains("secret_hash: hmac-sha256:"), "{text}");
    assert!(item.contains("expires: \""), "{text}");
    assert!(!item.contains(&secret), "the secret is in the YAML: {item}");
    assert!(dir.path().join("data/service-token.key").exists());
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(audit.contains("service_token.created") && !audit.contains(&secret));

    std::fs::write(&cfg, format!("{CONFIG}{item}")).unwrap();
    let explain = otpgate(&[
        "--config",
        cfg_arg,
        "policy",
        "explain",
        "--app",
        "api",
        "--service-token",
        "loadtest",
    ]);
    let explain_text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explain_text.contains("decision: service_auth by policy \"machines\""),
        "{explain_text}{}",
        String::from_utf8_lossy(&explain.stderr)
    );

    let mut p = spawn(&cfg, &[("OTPGATE_LISTEN__HTTPS", "null")]).await;
    let c = client_with(&[], Versions::Http1);
    let url = format!("http://api.test:{}/load", p.http.unwrap().port());
    let status = |secret: String| {
        let req = c
            .get(&url)
            .header("Otpgate-Client-Id", &id)
            .header("Otpgate-Client-Secret", secret);
        async move { req.send().await.unwrap() }
    };
    let r = status(secret.clone()).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["identity"],
        serde_json::json!({ "user": "service:loadtest" })
    );
    assert!(!v.to_string().contains(&secret));
    let r = status("0".repeat(64)).await;
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({ "error": "invalid_service_token" }));

    // Rotation: a new secret for the same client id; both work until the old hash goes.
    let out = otpgate(&["--config", cfg_arg, "service-token", "rotate", "loadtest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(header_line(lines.next(), "Otpgate-Client-Id"), id);
    let new_secret = header_line(lines.next(), "Otpgate-Client-Secret").to_owned();
    assert_ne!(new_secret, secret);
    let rotated: String = text
        .lines()
        .skip_while(|l| !l.starts_with("  - name: loadtest"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        rotated.contains("previous_secret_hash: hmac-sha256:"),
        "{text}"
    );
    assert!(!rotated.contains(&new_secret) && !rotated.contains(&secret));
    std::fs::write(&cfg, format!("{CONFIG}{rotated}")).unwrap();
    p.signal("HUP");
    p.wait_for_line("configuration reloaded").await;
    assert_eq!(status(new_secret.clone()).await.status(), 200);
    assert_eq!(status(secret.clone()).await.status(), 200);
    let done: String = rotated
        .lines()
        .filter(|l| !l.contains("previous_secret_hash"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, format!("{CONFIG}{done}")).unwrap();
    p.signal("HUP");
    p.wait_for_line("configuration reloaded").await;
    assert_eq!(status(new_secret).await.status(), 200);
    assert_eq!(
        status(secret).await.status(),
        401,
        "the old secret ends with the rotation"
    );
}
