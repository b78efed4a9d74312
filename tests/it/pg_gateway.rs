//! A gateway on `credentials: postgres://` (docs/architecture.md, the store room): temporary
//! passwords and passwords chosen with them live in PostgreSQL (nothing in `data_dir`'s SQLite
//! file); when PostgreSQL goes down, logins that need it fail closed with the "try again in a
//! moment" page while signed-in browsers keep being proxied and `/readyz` names the store;
//! when it returns, logins work again without a restart.

use std::time::{Duration, Instant};

use crate::login::Visitor;
use crate::onetime::{GOOD_PASSWORD, password_login, set_password, setup};
use crate::postgres::PgServer;

const UNAVAILABLE: &str = "Signing in is not possible right now";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_gateway_logs_in_with_a_temporary_password_and_then_a_password() {
    let Some(pg) = PgServer::start().await else {
        return;
    };
    let Some((smtp, _up, gw)) = setup(&pg.yaml()).await else {
        return;
    };
    // A temporary password mailed, used, and a password chosen with it.
    let mut v = set_password(
        &gw,
        &smtp,
        "carol@corp.example",
        "carol@corp.example",
        GOOD_PASSWORD,
    )
    .await;
    assert_eq!(v.get("/docs").await.status, 200);
    // Both are in PostgreSQL, none in an embedded store.
    let store = pg.store().await;
    let temp = store
        .temp_password("carol@corp.example")
        .await
        .unwrap()
        .unwrap();
    assert!(temp.used);
    let hash = store
        .password_hash("carol@corp.example")
        .await
        .unwrap()
        .unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert!(!gw.config().data_dir.join("otpgate.db").exists());
    // A new browser logs in with the password.
    let mut w = Visitor::new(&gw);
    let p = password_login(&mut w, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(w.get("/docs").await.status, 200);
    // A wrong one is counted in PostgreSQL.
    let mut x = Visitor::new(&gw);
    password_login(&mut x, "carol@corp.example", "not the password at all").await;
    assert_eq!(
        store
            .failures("carol@corp.example", 0)
            .await
            .unwrap()
            .consecutive,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_43_postgresql_down_fails_logins_closed_keeps_sessions_and_recovers() {
    let Some(mut pg) = PgServer::start().await else {
        return;
    };
    let Some((smtp, up, gw)) = setup(&pg.yaml()).await else {
        return;
    };
    let mut v = set_password(
        &gw,
        &smtp,
        "carol@corp.example",
        "carol@corp.example",
        GOOD_PASSWORD,
    )
    .await;
    assert_eq!(gw.readyz().await.0, 200);

    pg.stop();
    // A login that needs the store fails closed with the friendly 503 page ...
    let mut w = Visitor::new(&gw);
    let p = password_login(&mut w, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(p.status, 503, "{}", p.body);
    assert!(p.body.contains(UNAVAILABLE), "{}", p.body);
    assert!(!w.jar.keys().any(|k| k == "__Host-otpgate"), "no session");
    // ... while a signed-in browser keeps being proxied (the hot path never asks the store).
    let hits = up.hits();
    assert_eq!(v.get("/docs").await.status, 200);
    assert_eq!(up.hits(), hits + 1);
    let (status, body) = gw.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("credentials store"), "{body}");
    assert!(gw.metrics().await.contains("otpgate_store_errors_total"));

    // PostgreSQL back: logins work again without restarting the gateway.
    pg.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut w = Visitor::new(&gw);
        let p = password_login(&mut w, "carol@corp.example", GOOD_PASSWORD).await;
        if p.status == 303 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logins did not recover: {}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.readyz().await.0, 200);
}
