//! The store's contract, against the embedded SQLite store.

use super::*;

#[tokio::test]
async fn revocations_persist_across_reopen_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
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
    drop(s);
    let s = Store::open_embedded(dir.path()).unwrap();
    let all = s.revocations_since(0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].kind, RevocationKind::User);
    assert_eq!(all[1].subject, "alice@corp.example");
    assert_eq!(s.revocations_since(a).await.unwrap().len(), 1);
    assert_eq!(s.prune(10_000).await.unwrap(), 1);
    assert_eq!(s.revocations_since(0).await.unwrap().len(), 1);
    s.ping().await.unwrap();
}

#[tokio::test]
async fn family_revocations_are_stored_as_family() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    s.revoke(RevocationKind::Family, "0a0b", 0, 5_000, 1_000)
        .await
        .unwrap();
    drop(s);
    let s = Store::open_embedded(dir.path()).unwrap();
    let all = s.revocations_since(0).await.unwrap();
    assert_eq!(all[0].kind, RevocationKind::Family);
    assert_eq!(RevocationKind::Family.as_str(), "family");
    // Sequence numbers keep growing across the migration that made room for the kind.
    let next = s
        .revoke(RevocationKind::Session, "00ff", 0, 5_000, 1_000)
        .await
        .unwrap();
    assert!(next > all[0].seq);
}

const POLICY: LockPolicy = LockPolicy {
    after: 3,
    first: std::time::Duration::from_secs(300),
    longest: std::time::Duration::from_secs(3600),
    hard_cap: 6,
};

#[tokio::test]
async fn failures_lock_for_a_growing_time_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    let a = "a@b.example";
    assert_eq!(s.failures(a, 0).await.unwrap(), Failures::default());
    for i in 1..=3 {
        let f = s.record_failure(a, 1_000, POLICY, true).await.unwrap();
        assert_eq!(f.consecutive, i);
        assert_eq!(f.locked, i == 3);
    }
    assert_eq!(
        s.failures(a, 1_000).await.unwrap().lock_until_ms,
        Some(301_000)
    );
    // Failures during the lock are written but not counted.
    let f = s.record_failure(a, 2_000, POLICY, false).await.unwrap();
    assert_eq!((f.consecutive, f.locks), (3, 1));
    drop(s);
    let s = Store::open_embedded(dir.path()).unwrap();
    assert!(
        s.failures(a, 300_999).await.unwrap().locked,
        "the lock survives a restart"
    );
    assert!(
        !s.failures(a, 301_000).await.unwrap().locked,
        "and ends by itself"
    );
    // The next failure locks again, twice as long.
    let f = s.record_failure(a, 400_000, POLICY, true).await.unwrap();
    assert_eq!(
        (f.locked, f.lock_until_ms, f.locks),
        (true, Some(1_000_000), 2)
    );
    assert!(s.reset_failures(a).await.unwrap());
    assert_eq!(s.failures(a, 0).await.unwrap(), Failures::default());
    assert!(!s.reset_failures(a).await.unwrap());
}

#[tokio::test]
async fn the_hard_cap_locks_until_an_operator_unlocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    let a = "a@b.example";
    let mut now = 0;
    for _ in 0..6 {
        now += 10_000_000;
        s.record_failure(a, now, POLICY, true).await.unwrap();
    }
    let f = s.failures(a, now + 100 * 86_400_000).await.unwrap();
    assert_eq!((f.consecutive, f.locked), (6, true));
    assert!(s.reset_failures(a).await.unwrap());
    assert!(!s.failures(a, now).await.unwrap().locked);
}

#[test]
fn locks_double_up_to_the_longest() {
    let mut f = Failures::default();
    let mut lengths = Vec::new();
    let mut now = 0;
    for _ in 0..20 {
        f.consecutive += 1;
        f.locked = f.lock_until_ms.is_some_and(|u| u > now);
        let after = POLICY_LONG.after_failure(f, now, true);
        if after.locks > f.locks {
            lengths.push((after.lock_until_ms.unwrap() - now) / 60_000);
        }
        f = after;
        now = f.lock_until_ms.unwrap_or(now);
    }
    assert_eq!(&lengths[..6], &[5, 10, 20, 40, 60, 60]);
}

const POLICY_LONG: LockPolicy = LockPolicy {
    after: 1,
    first: std::time::Duration::from_secs(300),
    longest: std::time::Duration::from_secs(3600),
    hard_cap: 100,
};

#[tokio::test]
async fn temporary_passwords_follow_the_reissue_rule_and_work_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    let day = 86_400_000;
    let t = |digest: u8, at: u64| TempPassword {
        email: "a@b.example".into(),
        digest: [digest; 32],
        kid: "k1".into(),
        issued_ms: at,
        expires_ms: at + day,
        used: false,
    };
    assert!(
        s.issue_temp_password(&t(1, 1_000), day, false)
            .await
            .unwrap()
    );
    // Within 24 h: nothing changes, the first stays valid.
    assert!(
        !s.issue_temp_password(&t(2, 2_000), day, false)
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
    // --force replaces it.
    assert!(
        s.issue_temp_password(&t(3, 3_000), day, true)
            .await
            .unwrap()
    );
    assert!(
        !s.use_temp_password("a@b.example", &[1; 32], 4_000)
            .await
            .unwrap(),
        "the replaced one is dead"
    );
    assert!(
        s.use_temp_password("a@b.example", &[3; 32], 4_000)
            .await
            .unwrap()
    );
    assert!(
        !s.use_temp_password("a@b.example", &[3; 32], 4_001)
            .await
            .unwrap(),
        "once"
    );
    // After 24 h a new one may be issued; an expired one does not work.
    assert!(
        s.issue_temp_password(&t(4, 3_000 + day), day, false)
            .await
            .unwrap()
    );
    assert!(
        !s.use_temp_password("a@b.example", &[4; 32], 3_000 + 2 * day)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn links_work_once_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    let l = Link {
        digest: [9; 32],
        email: "a@b.example".into(),
        app: "app".into(),
        rd: "https://x/".into(),
        issued_ms: 0,
        expires_ms: 1_000,
    };
    s.put_link(&l).await.unwrap();
    assert_eq!(
        s.link(&[9; 32], 10).await.unwrap(),
        Some(l.clone()),
        "looking does not use it"
    );
    assert_eq!(s.link(&[9; 32], 20).await.unwrap(), Some(l.clone()));
    assert_eq!(s.use_link(&[9; 32], 30).await.unwrap(), Some(l));
    assert_eq!(s.use_link(&[9; 32], 40).await.unwrap(), None, "once");
    assert_eq!(s.link(&[9; 32], 40).await.unwrap(), None);
    let l2 = Link {
        digest: [8; 32],
        email: "a@b.example".into(),
        app: "app".into(),
        rd: "https://x/".into(),
        issued_ms: 0,
        expires_ms: 1_000,
    };
    s.put_link(&l2).await.unwrap();
    assert_eq!(s.use_link(&[8; 32], 1_000).await.unwrap(), None, "expired");
    assert_eq!(s.prune_links(2_000).await.unwrap(), 2);
}

#[tokio::test]
async fn passwords_are_stored_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    assert_eq!(s.password_hash("a@b.example").await.unwrap(), None);
    assert!(!s.has_password("a@b.example").await.unwrap());
    s.set_password("a@b.example", "$argon2id$one", 1)
        .await
        .unwrap();
    s.set_password("a@b.example", "$argon2id$two", 2)
        .await
        .unwrap();
    assert_eq!(
        s.password_hash("a@b.example").await.unwrap().as_deref(),
        Some("$argon2id$two")
    );
    assert!(s.has_password("a@b.example").await.unwrap());
}

#[tokio::test]
async fn directory_snapshot_is_replaced_whole_and_survives_reopen() {
    use crate::email::Email;
    use crate::users::DirectoryUser;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_embedded(dir.path()).unwrap();
    assert_eq!(s.directory_snapshot().await.unwrap(), None);
    let user = |id: &str, temp: Option<&str>, groups: &[&str]| DirectoryUser {
        id: id.into(),
        dn: format!("uid={id},dc=x"),
        temp_auth_email: temp.map(|t| Email::parse(t).unwrap()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    let first = DirectorySnapshot {
        fingerprint: "abc".into(),
        synced_ms: 1_000,
        users: vec![
            user(
                "alice@x.example",
                Some("alice@home.example"),
                &["admins", "staff"],
            ),
            user("bob@x.example", None, &[]),
            user("carol", Some("carol@x.example"), &["staff"]),
        ],
    };
    s.save_directory_snapshot(&first).await.unwrap();
    assert_eq!(s.directory_snapshot().await.unwrap().as_ref(), Some(&first));
    let second = DirectorySnapshot {
        fingerprint: "def".into(),
        synced_ms: 2_000,
        users: vec![user("bob@x.example", None, &["staff"])],
    };
    s.save_directory_snapshot(&second).await.unwrap();
    drop(s);
    let s = Store::open_embedded(dir.path()).unwrap();
    assert_eq!(s.directory_snapshot().await.unwrap(), Some(second));
}

#[tokio::test]
async fn refuses_a_database_from_a_newer_build() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open_embedded(dir.path()).unwrap());
    let c = rusqlite::Connection::open(dir.path().join("otpgate.db")).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    assert!(matches!(
        Store::open_embedded(dir.path()),
        Err(StoreError::Newer { found: 99, .. })
    ));
}
