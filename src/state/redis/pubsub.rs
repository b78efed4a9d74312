//! Pub/sub on Redis: news one replica has for the others (a revocation) reaches them in
//! milliseconds. Redis keeps no published message: one sent while a subscriber is disconnected
//! is lost to it, so the subscriber says when it (re)subscribes ([`Heard::Subscribed`]) and its
//! owner catches up from where the data is kept. The subscription has a connection of its own
//! (a subscribed connection serves nothing else), re-made with a growing pause after any loss
//! and pinged now and then so a silently dead one is noticed.

use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::PubSub;
use redis::{RedisResult, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::Source;
use super::{CALL_TIMEOUT, Failure, RedisState, chain, unavailable};
use crate::state::StateError;

/// The first pause before subscribing again; it doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// How often an idle subscription is pinged.
const PING_EVERY: Duration = Duration::from_secs(15);

/// What a subscription hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Subscribed (again): anything published before now may have been missed.
    Subscribed,
    /// One published payload.
    Message(Vec<u8>),
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("the connection closed")]
    Closed,
    #[error("no answer to a ping within {0:?}")]
    Timeout(Duration),
    #[error("Redis")]
    Redis(#[source] redis::RedisError),
}

impl RedisState {
    /// PUBLISH: the number of subscribers that received it. A failure is counted but leaves
    /// readiness alone: logins do not depend on it (an ACL without the channel, say), and an
    /// outage shows in the next login or probe.
    pub(in crate::state) async fn publish(
        &self,
        channel: &str,
        payload: &[u8],
    ) -> Result<u64, StateError> {
        let mut c = redis::cmd("PUBLISH");
        c.arg(channel).arg(payload);
        let c = &c;
        self.call(
            move |mut conn| async move { c.query_async(&mut conn).await.map_err(Failure::Redis) },
        )
        .await
        .map_err(|f| {
            ::metrics::counter!(crate::metrics::STATE_ERRORS, "op" => "publish").increment(1);
            unavailable(f)
        })
    }

    /// A dedicated connection subscribed to `channel` (for Sentinel, on the primary named now).
    async fn subscribe(&self, channel: &str) -> RedisResult<PubSub> {
        let client = match &self.source {
            Source::Server(_, client) => (**client).clone(),
            Source::Sentinel(s) => s.client().await?,
        };
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    }

    /// Hands what `channel` hears to `tx` until `cancel` (or until `tx` is closed),
    /// subscribing again after every loss.
    pub(in crate::state) async fn listen(
        &self,
        channel: &str,
        tx: &mpsc::Sender<Heard>,
        cancel: &CancellationToken,
    ) {
        let mut pause = FIRST_RETRY;
        let mut lost = false;
        loop {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(CALL_TIMEOUT, self.subscribe(channel)) => r,
            };
            match attempt {
                Ok(Ok(pubsub)) => {
                    if lost {
                        tracing::info!(url = %self.url, channel, "subscribed again");
                    }
                    pause = FIRST_RETRY;
                    if tx.send(Heard::Subscribed).await.is_err() {
                        return;
                    }
                    match receive(pubsub, tx, cancel).await {
                        Ok(()) => return,
                        Err(e) => {
                            lost = true;
                            tracing::warn!(url = %self.url, channel, error = %chain(&e),
                                "subscription lost; subscribing again");
                        }
                    }
                }
                Ok(Err(e)) => {
                    if !lost {
                        tracing::warn!(url = %self.url, channel, error = %chain(&e),
                            "cannot subscribe; retrying");
                    }
                    lost = true;
                }
                Err(_) => {
                    if !lost {
                        tracing::warn!(url = %self.url, channel,
                            "cannot subscribe: no answer in time; retrying");
                    }
                    lost = true;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(LAST_RETRY);
        }
    }
}

/// Passes messages on until the subscription is lost (`Err`) or the listener stops (`Ok`).
async fn receive(
    pubsub: PubSub,
    tx: &mpsc::Sender<Heard>,
    cancel: &CancellationToken,
) -> Result<(), Lost> {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            m = stream.next() => {
                let Some(m) = m else { return Err(Lost::Closed) };
                if tx.send(Heard::Message(m.get_payload_bytes().to_vec())).await.is_err() {
                    return Ok(());
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(CALL_TIMEOUT, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(Lost::Redis(e)),
                    Err(_) => return Err(Lost::Timeout(CALL_TIMEOUT)),
                }
            }
        }
    }
}
