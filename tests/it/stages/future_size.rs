//! The size of the future that carries one request through the pipeline. Every level of the
//! pipeline creates its part of that future and moves it into the level above, and rustc lays
//! an async fn out with room for its own arguments beside the future it awaits: unchecked,
//! each level was about twice the size of the one below and a proxied request copied well
//! over 100 KiB of futures (docs/architecture.md, "Futures"). Boxing the rare branches and the
//! proxy stage keeps it small; this test keeps it so.

use super::*;

#[tokio::test]
async fn the_per_request_future_stays_small() {
    let stage = Stage::new(&config(
        "",
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies: [ { name: all, action: allow, include: [ { everyone: true } ] } ]
",
    ));
    let c = conn(CLIENT);
    let fut = stage
        .gateway()
        .handle(get("app.test", "/").body(()).unwrap(), &c);
    let size = std::mem::size_of_val(&fut);
    eprintln!("Gateway::handle future: {size} bytes");
    // The test build lays futures out differently from a release build (12 KiB here before
    // the boxes, 57 KiB there); the bound is for the test build.
    assert!(size <= 8 * 1024, "Gateway::handle's future is {size} bytes");
    drop(fut);
}
