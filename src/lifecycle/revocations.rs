//! Keeps the revocation cache of a running gateway current (docs/security.md#31): revocations
//! pushed by other replicas are applied as they arrive (state on Redis), the store is polled
//! for new rows every [`POLL_INTERVAL`] and re-read whole every [`RESYNC_INTERVAL`], and entries
//! that can no longer match a session are pruned. The push is the fast path; the poll bounds the
//! delay when a message is lost, and the full re-read catches a row the poll stepped over
//! (committed after a row with a higher sequence number was read).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::session;
use crate::session::revocation::{CHANNEL, POLL_INTERVAL, RESYNC_INTERVAL, parse_message};
use crate::state::Heard;

/// Runs until `cancel`.
pub(super) async fn sync(gw: Arc<Gateway>, cancel: CancellationToken) {
    let (tx, mut heard) = mpsc::channel(256);
    let listener = {
        let (state, cancel) = (gw.state().clone(), cancel.clone());
        tokio::spawn(async move { state.listen(CHANNEL, &tx, &cancel).await })
    };
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Both first ticks are immediate; the cache was filled at start.
    poll.tick().await;
    resync.tick().await;
    let mut listening = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            h = heard.recv(), if listening => match h {
                Some(Heard::Message(m)) => match parse_message(&m) {
                    Some(r) => gw.sessions().revocations().apply(&[r]),
                    None => tracing::warn!(channel = CHANNEL, "ignored a message that is not a revocation"),
                },
                // Whatever was pushed while the subscription was down is in the store.
                Some(Heard::Subscribed) => read_since(&gw, gw.sessions().revocations().last_seq()).await,
                None => listening = false,
            },
            _ = poll.tick() => read_since(&gw, gw.sessions().revocations().last_seq()).await,
            _ = resync.tick() => {
                read_since(&gw, 0).await;
                prune(&gw).await;
            }
        }
    }
    let _ = listener.await;
}

/// Applies the stored revocations after `seq`.
async fn read_since(gw: &Gateway, seq: i64) {
    match gw.store().revocations_since(seq).await {
        Ok(rows) => gw.sessions().revocations().apply(&rows),
        Err(e) => tracing::error!(error = %e, "cannot read revocations; retrying"),
    }
}

/// Forgets what no live session can match any more, in the cache and in the store.
async fn prune(gw: &Gateway) {
    let now_ms = u64::try_from(gw.clock().now().as_millis()).unwrap_or(u64::MAX);
    let max_ms = u64::try_from(crate::config::MAX_SESSION.as_millis()).unwrap_or(u64::MAX);
    gw.sessions().revocations().prune(now_ms, max_ms);
    let cutoff = now_ms.saturating_sub(session::cookie::SKEW_MS);
    if let Err(e) = gw.store().prune(cutoff).await {
        tracing::warn!(error = %e, "cannot prune old revocations");
    }
}
