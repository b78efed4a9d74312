//! `otpgate store copy` between the embedded store and a real PostgreSQL, both ways: every
//! record kind arrives as it was (used links and temporary passwords stay used, locks stay,
//! revocation sequence numbers go on), a target with records is refused without `--force`, and
//! the command line prints the counts and never the password.

use otpgate::store::copy::{CopyError, copy};
use otpgate::store::{RevocationKind, Store};
use otpgate::users::DirectorySnapshot;

use crate::pg_store::{DAY, POLICY, link, temp, user};
use crate::postgres::PgServer;

/// A store with one record of every kind (some used, some locked).
async fn populate(s: &Store) {
    s.set_password("alice@corp.example", "$argon2id$v=19$alice", 5)
        .await
        .unwrap();
    s.set_password("bob@corp.example", "$argon2id$v=19$bob", 6)
        .await
        .unwrap();
    s.issue_temp_password(&temp("carol@corp.example", 1, 1_000), DAY, false)
        .await
        .unwrap();
    s.issue_temp_password(&temp("dave@corp.example", 2, 1_000), DAY, false)
        .await
        .unwrap();
    assert!(
        s.use_temp_password("dave@corp.example", &[2; 32], 2_000)
            .await
            .unwrap()
    );
    s.put_link(&link(7, u64::MAX / 4)).await.unwrap();
    s.put_link(&link(8, u64::MAX / 4)).await.unwrap();
    assert!(s.use_link(&[8; 32], 3_000).await.unwrap().is_some());
    s.revoke(RevocationKind::Session, "00aa", 0, u64::MAX / 4, 1)
        .await
        .unwrap();
    s.revoke(RevocationKind::User, "bob@corp.example", 5, u64::MAX / 4, 5)
        .await
        .unwrap();
    for _ in 0..3 {
        s.record_failure("eve@corp.example", 10_000, POLICY, true)
            .await
            .unwrap();
    }
    s.save_directory_snapshot(&DirectorySnapshot {
        fingerprint: "fp".into(),
        synced_ms: 42,
        users: vec![
            user("frank", Some("frank@home.example"), &["ops", "eng"]),
            user("gina@corp.example", None, &[]),
        ],
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_every_record_to_postgresql_and_back() {
    let Some(pg) = PgServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_embedded(dir.path()).unwrap();
    populate(&sqlite).await;
    let target = pg.store().await;

    let counts = copy(&sqlite, &target, false).await.unwrap();
    assert_eq!(
        (
            counts.passwords,
            counts.temp_passwords,
            counts.links,
            counts.revocations,
            counts.failures,
            counts.directory_users
        ),
        (2, 2, 2, 2, 1, 2)
    );
    let original = sqlite.dump().await.unwrap();
    assert_eq!(target.dump().await.unwrap(), original, "record by record");
    // What was used stays used, what was locked stays locked, sequence numbers go on.
    assert!(target.use_link(&[8; 32], 4_000).await.unwrap().is_none());
    assert!(
        !target
            .use_temp_password("dave@corp.example", &[2; 32], 4_000)
            .await
            .unwrap()
    );
    assert!(
        target
            .failures("eve@corp.example", 10_001)
            .await
            .unwrap()
            .locked
    );
    let seq = target
        .revoke(RevocationKind::Session, "00bb", 0, 1, 1)
        .await
        .unwrap();
    assert!(seq > original.revocations.last().unwrap().seq);
    assert!(target.use_link(&[7; 32], 4_000).await.unwrap().is_some());

    // A target with records is refused without force, replaced with it.
    assert!(matches!(
        copy(&sqlite, &target, false).await,
        Err(CopyError::NotEmpty { .. })
    ));
    copy(&sqlite, &target, true).await.unwrap();
    assert_eq!(target.dump().await.unwrap(), original);

    // And back into a new embedded store.
    let back_dir = tempfile::tempdir().unwrap();
    let back = Store::open_embedded(back_dir.path()).unwrap();
    copy(&target, &back, false).await.unwrap();
    assert_eq!(back.dump().await.unwrap(), original);
}

#[test]
fn store_copy_through_the_command_line() {
    crate::harness::init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = rt.block_on(PgServer::start()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    rt.block_on(async {
        populate(&Store::open_embedded(&data).unwrap()).await;
    });
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: 1
listen: {{ http: 127.0.0.1:8080 }}
data_dir: {data:?}
users: [ {{ id: alice@corp.example }} ]
apps:
  - {{ name: app, hosts: [app.test], upstream: 'builtin:echo', policies: [ {{ name: all, action: allow, include: [ {{ email_domain: corp.example }} ] }} ] }}
"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let url = pg.url();
    let pw = pg.password_file();
    let pw = pw.to_str().unwrap();
    let out = run(&[
        "store",
        "copy",
        "--from",
        "embedded",
        "--to",
        &url,
        "--to-password-file",
        pw,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passwords            2"), "{stdout}");
    assert!(
        stdout.contains("directory snapshot   1 (2 users)"),
        "{stdout}"
    );
    assert!(!stdout.contains(crate::postgres::PASSWORD));
    // Again: refused, the target is not empty.
    let out = run(&[
        "store",
        "copy",
        "--from",
        "embedded",
        "--to",
        &url,
        "--to-password-file",
        pw,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    let out = run(&[
        "store",
        "copy",
        "--from",
        "embedded",
        "--to",
        &url,
        "--to-password-file",
        pw,
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Back into another folder.
    let back = dir.path().join("back");
    let out = run(&[
        "store",
        "copy",
        "--from",
        &url,
        "--from-password-file",
        pw,
        "--to",
        "embedded",
        "--data-dir",
        back.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        assert_eq!(
            Store::open_embedded(&back).unwrap().dump().await.unwrap(),
            Store::open_embedded(&data).unwrap().dump().await.unwrap()
        );
    });
    // An embedded source that does not exist is refused rather than copied as empty.
    let out = run(&[
        "store",
        "copy",
        "--from",
        "embedded",
        "--data-dir",
        "/nonexistent/otpgate",
        "--to",
        &url,
        "--to-password-file",
        pw,
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no embedded store"));
    // A password in the URL is refused before anything is opened.
    let out = run(&[
        "store",
        "copy",
        "--from",
        "embedded",
        "--to",
        "postgres://otpgate:x@127.0.0.1/db",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("password_file"));
}
