//! The credentials store on a real PostgreSQL (docs/architecture.md, the store room): the same
//! behavioural contract as the embedded store, run against both; replicas (separate store
//! handles, each with its own pool) racing for single-use records; migrations racing at start
//! and refusing a newer schema; TLS by `sslmode`. `store copy` is in pg_copy.rs.

use std::path::Path;
use std::sync::Arc;

use otpgate::config::CredentialsConfig;
use otpgate::store::{Failures, Link, LockPolicy, RevocationKind, Store, StoreError, TempPassword};
use otpgate::users::{DirectorySnapshot, DirectoryUser};

use crate::harness::TestCa;
use crate::postgres::PgServer;

pub const POLICY: LockPolicy = LockPolicy {
    after: 3,
    first: std::time::Duration::from_secs(300),
    longest: std::time::Duration::from_secs(3600),
    hard_cap: 6,
};

pub const DAY: u64 = 86_400_000;

pub fn temp(email: &str, digest: u8, at: u64) -> TempPassword {
    TempPassword {
        email: email.into(),
        digest: [digest; 32],
        kid: "k1".into(),
        issued_ms: at,
        expires_ms: at + DAY,
        used: false,
    }
}

pub fn link(digest: u8, expires_ms: u64) -> Link {
    Link {
        digest: [digest; 32],
        email: "a@b.example".into(),
        app: "app".into(),
        rd: "https://x/".into(),
        issued_ms: 0,
        expires_ms,
    }
}

pub fn user(id: &str, temp: Option<&str>, groups: &[&str]) -> DirectoryUser {
    DirectoryUser {
        id: id.into(),
        dn: format!("uid={id},dc=x"),
        temp_auth_email: temp.map(|t| otpgate::email::Email::parse(t).unwrap()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

/// The store's behaviour, whatever the backend: one body for both.
async fn contract(s: &Store) {
    // Revocations: increasing sequence numbers, read from a position, pruned when moot.
    let a = s
        .revoke(RevocationKind::Session, "00ff", 0, 5_000, 1_000)
        .await
        .unwrap();
    let b = s
        .revoke(
            RevocationKind::User,
            "alice@corp.example",
            1_000,
            90_000,
            1_000,
        )
        .await
        .unwrap();
    assert!(b > a);
    let all = s.revocations_since(0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].kind, RevocationKind::User);
    assert_eq!(all[1].subject, "alice@corp.example");
    assert_eq!(all[1].not_before_ms, 1_000);
    assert_eq!(s.revocations_since(a).await.unwrap().len(), 1);
    assert_eq!(s.prune(10_000).await.unwrap(), 1);
    assert_eq!(s.revocations_since(0).await.unwrap().len(), 1);
    s.ping().await.unwrap();

    // Failures: a lock after three, written but not counted during it, twice as long next.
    let e = "a@b.example";
    assert_eq!(s.failures(e, 0).await.unwrap(), Failures::default());
    for i in 1..=3 {
        let f = s.record_failure(e, 1_000, POLICY, true).await.unwrap();
        assert_eq!((f.consecutive, f.locked), (i, i == 3));
    }
    assert_eq!(
        s.failures(e, 1_000).await.unwrap().lock_until_ms,
        Some(301_000)
    );
    let f = s.record_failure(e, 2_000, POLICY, false).await.unwrap();
    assert_eq!((f.consecutive, f.locks), (3, 1));
    assert!(s.failures(e, 300_999).await.unwrap().locked);
    assert!(!s.failures(e, 301_000).await.unwrap().locked);
    let f = s.record_failure(e, 400_000, POLICY, true).await.unwrap();
    assert_eq!(
        (f.locked, f.lock_until_ms, f.locks),
        (true, Some(1_000_000), 2)
    );
    assert!(s.reset_failures(e).await.unwrap());
    assert_eq!(s.failures(e, 0).await.unwrap(), Failures::default());
    assert!(!s.reset_failures(e).await.unwrap());
    // The hard cap locks until an operator unlocks.
    let mut now = 0;
    for _ in 0..6 {
        now += 10_000_000;
        s.record_failure("cap@b.example", now, POLICY, true)
            .await
            .unwrap();
    }
    let f = s.failures("cap@b.example", now + 100 * DAY).await.unwrap();
    assert_eq!((f.consecutive, f.locked), (6, true));
    assert_eq!(f.lock_until_ms, Some(LockPolicy::FOREVER));

    // Temporary passwords: once per day unless forced, single use, expire.
    let t = |d, at| temp("a@b.example", d, at);
    assert!(
        s.issue_temp_password(&t(1, 1_000), DAY, false)
            .await
            .unwrap()
    );
    assert!(
        !s.issue_temp_password(&t(2, 2_000), DAY, false)
            .await
            .unwrap()
    );
    assert_eq!(
        s.temp_password("a@b.example")
            .await
            .unwrap()
            .unwrap()
            .digest,
        [1; 32]
    );
    assert!(
        s.issue_temp_password(&t(3, 3_000), DAY, true)
            .await
            .unwrap()
    );
    assert!(
        !s.use_temp_password("a@b.example", &[1; 32], 4_000)
            .await
            .unwrap()
    );
    assert!(
        s.use_temp_password("a@b.example", &[3; 32], 4_000)
            .await
            .unwrap()
    );
    assert!(s.temp_password("a@b.example").await.unwrap().unwrap().used);
    assert!(
        !s.use_temp_password("a@b.example", &[3; 32], 4_001)
            .await
            .unwrap()
    );
    assert!(
        s.issue_temp_password(&t(4, 3_000 + DAY), DAY, false)
            .await
            .unwrap()
    );
    assert!(
        !s.use_temp_password("a@b.example", &[4; 32], 3_000 + 2 * DAY)
            .await
            .unwrap()
    );

    // Links: looking does not use; use once; expired never.
    let l = link(9, 1_000);
    s.put_link(&l).await.unwrap();
    assert_eq!(s.link(&[9; 32], 10).await.unwrap(), Some(l.clone()));
    assert_eq!(s.use_link(&[9; 32], 30).await.unwrap(), Some(l));
    assert_eq!(s.use_link(&[9; 32], 40).await.unwrap(), None);
    assert_eq!(s.link(&[9; 32], 40).await.unwrap(), None);
    s.put_link(&link(8, 1_000)).await.unwrap();
    assert_eq!(s.use_link(&[8; 32], 1_000).await.unwrap(), None, "expired");
    assert_eq!(s.prune_links(2_000).await.unwrap(), 2);

    // Passwords.
    assert_eq!(s.password_hash("p@b.example").await.unwrap(), None);
    assert!(!s.has_password("p@b.example").await.unwrap());
    s.set_password("p@b.example", "$argon2id$one", 1)
        .await
        .unwrap();
    s.set_password("p@b.example", "$argon2id$two", 2)
        .await
        .unwrap();
    assert_eq!(
        s.passwords("p@b.example").await.unwrap().0.as_deref(),
        Some("$argon2id$two")
    );
    assert!(s.has_password("p@b.example").await.unwrap());

    // The directory snapshot, replaced whole.
    assert_eq!(s.directory_snapshot().await.unwrap(), None);
    let first = DirectorySnapshot {
        fingerprint: "abc".into(),
        synced_ms: 1_000,
        users: vec![
            user("Zed", None, &["b", "a"]),
            user(
                "alice@x.example",
                Some("alice@home.example"),
                &["admins", "staff"],
            ),
            user("bob@x.example", None, &[]),
        ],
    };
    s.save_directory_snapshot(&first).await.unwrap();
    let mut expected = first.clone();
    expected.users[0].groups.sort();
    assert_eq!(s.directory_snapshot().await.unwrap(), Some(expected));
    let second = DirectorySnapshot {
        fingerprint: "def".into(),
        synced_ms: 2_000,
        users: vec![user("bob@x.example", None, &["staff"])],
    };
    s.save_directory_snapshot(&second).await.unwrap();
    assert_eq!(s.directory_snapshot().await.unwrap(), Some(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_contract_holds_on_sqlite_and_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    contract(&Store::open_embedded(dir.path()).unwrap()).await;
    let Some(pg) = PgServer::start().await else {
        return;
    };
    let s = pg.store().await;
    contract(&s).await;
    // What was written is there for another replica (and after a restart).
    let other = pg.store().await;
    assert_eq!(other.revocations_since(0).await.unwrap().len(), 1);
    assert!(other.has_password("p@b.example").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_43_replicas_racing_for_a_link_or_temporary_password_one_wins() {
    let Some(pg) = PgServer::start().await else {
        return;
    };
    let replicas = [Arc::new(pg.store().await), Arc::new(pg.store().await)];
    for round in 0..10u8 {
        replicas[0]
            .put_link(&link(round, u64::MAX / 4))
            .await
            .unwrap();
        let e = format!("r{round}@b.example");
        assert!(
            replicas[1]
                .issue_temp_password(&temp(&e, round, 1_000), DAY, false)
                .await
                .unwrap()
        );
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = replicas[i % 2].clone();
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                let l = s.use_link(&[round; 32], 10).await.unwrap().is_some();
                let t = s.use_temp_password(&e, &[round; 32], 10).await.unwrap();
                (l, t)
            }));
        }
        let (mut links, mut temps) = (0, 0);
        for t in tasks {
            let (l, p) = t.await.unwrap();
            links += usize::from(l);
            temps += usize::from(p);
        }
        assert_eq!(
            (links, temps),
            (1, 1),
            "round {round}: exactly one use each"
        );
    }
    // Failures counted at once on both replicas are all counted.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = replicas[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            s.record_failure("f@b.example", 1_000, POLICY_NO_LOCK, true)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        replicas[0]
            .failures("f@b.example", 1_000)
            .await
            .unwrap()
            .consecutive,
        10
    );
}

const POLICY_NO_LOCK: LockPolicy = LockPolicy {
    after: 1_000,
    first: std::time::Duration::from_secs(300),
    longest: std::time::Duration::from_secs(3600),
    hard_cap: 1_000,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_43_one_temporary_password_per_day_across_replicas() {
    let Some(pg) = PgServer::start().await else {
        return;
    };
    let replicas = [Arc::new(pg.store().await), Arc::new(pg.store().await)];
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = replicas[usize::from(i) % 2].clone();
        tasks.push(tokio::spawn(async move {
            let issued = s
                .issue_temp_password(
                    &temp("t@b.example", i + 1, 1_000 + u64::from(i)),
                    DAY,
                    false,
                )
                .await
                .unwrap();
            (i + 1, issued)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (d, issued) = t.await.unwrap();
        if issued {
            winners.push(d);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    // The stored one is the winner's, and it stays for the day on both replicas.
    for s in &replicas {
        assert_eq!(
            s.temp_password("t@b.example")
                .await
                .unwrap()
                .unwrap()
                .digest,
            [winners[0]; 32]
        );
        assert!(
            !s.issue_temp_password(&temp("t@b.example", 99, 1_000 + DAY - 10), DAY, false)
                .await
                .unwrap()
        );
    }
    assert!(
        replicas[1]
            .issue_temp_password(&temp("t@b.example", 99, 1_000 + DAY + 8), DAY, false)
            .await
            .unwrap(),
        "a day later, one more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_43_migrations_run_once_when_replicas_start_together_and_refuse_a_newer_schema() {
    let Some(pg) = PgServer::start().await else {
        return;
    };
    let cfg = CredentialsConfig::Postgres(pg.config_with("disable", None));
    let dir = tempfile::tempdir().unwrap();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (cfg, dir) = (cfg.clone(), dir.path().to_path_buf());
            tokio::spawn(async move { Store::open(&cfg, &dir).await })
        })
        .collect();
    for o in opens {
        o.await.unwrap().unwrap();
    }
    pg.sql("DO $$ BEGIN IF (SELECT count(*) FROM schema_migrations) <> 1 THEN RAISE 'migrated twice'; END IF; END $$")
        .await;
    pg.sql("INSERT INTO schema_migrations (version) VALUES (99)")
        .await;
    match Store::open(&cfg, dir.path()).await {
        Err(StoreError::Newer { found: 99, known }) => assert!(known < 99),
        other => panic!("expected Newer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_43_tls_to_postgresql_by_sslmode() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let Some(pg) = PgServer::start_tls(&leaf).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let open = |sslmode: &str, ca_file: Option<&Path>| {
        let cfg = CredentialsConfig::Postgres(pg.config_with(sslmode, ca_file));
        let dir = dir.path().to_path_buf();
        async move { Store::open(&cfg, &dir).await }
    };
    // require: encrypted, the certificate not checked.
    let s = open("require", None).await.unwrap();
    s.ping().await.unwrap();
    pg.sql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'otpgate') THEN RAISE 'no TLS connection'; END IF; END $$").await;
    // verify-full: refused against an unknown CA, accepted with it as sslrootcert.
    let e = open("verify-full", None).await.unwrap_err();
    assert!(matches!(e, StoreError::Postgres { .. }), "{e:?}");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    open("verify-full", Some(&ca_file))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
}
