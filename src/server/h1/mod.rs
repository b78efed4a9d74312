//! The HTTP/1.1 fast path of the app listeners.
//!
//! Why by hand: hyper's server costs about 10k instructions per request on the proxy path
//! (its dispatcher, a header-read timer made and dropped per request, a second trip through
//! its poll loop after each head), a quarter of a proxied request's whole cost. Most requests
//! that reach an identity-aware proxy are the simplest HTTP has: `GET` or `HEAD` without a
//! body. Those are served here, with httparse (hyper's own parser, same settings), one read
//! buffer and one write buffer per connection, and one timer per connection.
//!
//! Everything else is hyper's, for the rest of the connection: a body, an upgrade, `Expect`,
//! `TE`, HTTP/1.0, HTTP/2's preface, a target that is not origin-form, a head too large or one
//! httparse refuses. The bytes read so far go with it ([`Outcome::HandOver`]), so hyper sees
//! the connection exactly as the client sent it, answers as it always did (`400`, `431`, ...),
//! and request framing (`Content-Length` against `Transfer-Encoding`) is only ever decided by
//! hyper. See docs/architecture.md, "The HTTP/1.1 fast path".
//!
//! Timeouts, as with hyper: `limits.header_read_timeout` bounds the wait for each head, from
//! the end of the previous answer (so it also closes idle kept-alive connections);
//! `limits.idle_timeout` closes a connection that stays silent between requests sooner, when
//! it is the shorter. On shutdown a connection between requests closes at once; one inside a
//! request finishes it and says `Connection: close`.

pub(super) mod date;
mod request;
mod response;

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::gateway::{ConnInfo, Gateway};

use request::Verdict;

/// The read buffer's first size, and how much it grows by (hyper's default too).
const READ_BUF: usize = 8 * 1024;

/// How a connection left the fast path.
pub(super) enum Outcome<I> {
    /// It is over: the client left, a timeout or shutdown closed it, or it broke.
    Closed,
    /// hyper takes it from here, starting with these bytes already read from it.
    HandOver(I, Bytes),
}

/// Serves a connection's simple requests until it ends or hyper must take over.
pub(super) async fn serve<I>(
    mut io: I,
    gw: &Gateway,
    info: &ConnInfo,
    limits: &Limits,
    cancel: &CancellationToken,
) -> Outcome<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = Vec::with_capacity(1024);
    let mut target: Range<usize> = 0..0;
    let mut spans = Vec::with_capacity(16);
    let quiet = limits.header_read_timeout.min(limits.idle_timeout);
    // One timer for the connection. Each head's deadline is kept here and the timer is moved
    // to it only when it fires early: re-arming a timer for every request would cost more
    // than the rest of the head's handling.
    let timer = tokio::time::sleep(quiet);
    tokio::pin!(timer);
    // Made once too: each `cancelled()` future joins and leaves the token's waiter list.
    let stop = cancel.cancelled();
    tokio::pin!(stop);
    loop {
        let mut since: Option<Instant> = None;
        let (len, head_request, close) = loop {
            if !buf.is_empty() {
                match request::inspect(&buf, &mut target, &mut spans) {
                    // A head that came whole in one read may still be over the limit: hyper
                    // refuses it (`431`) as it refuses one that arrived in pieces.
                    Verdict::Simple { len, head, close } if len <= limits.max_header_bytes => {
                        break (len, head, close);
                    }
                    Verdict::Partial if buf.len() < limits.max_header_bytes => {}
                    Verdict::Simple { .. } | Verdict::Partial | Verdict::Other => {
                        return Outcome::HandOver(io, buf.freeze());
                    }
                }
            }
            let started = *since.get_or_insert_with(Instant::now);
            let deadline = started
                + if buf.is_empty() {
                    quiet
                } else {
                    limits.header_read_timeout
                };
            if buf.capacity() - buf.len() < READ_BUF / 8 {
                buf.reserve(READ_BUF);
            }
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) => return Outcome::Closed,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer = %info.peer, error = %e, "connection read failed");
                        return Outcome::Closed;
                    }
                },
                () = &mut timer => {
                    if Instant::now() >= deadline {
                        tracing::debug!(peer = %info.peer, waiting = !buf.is_empty(), "no request head in time: closing");
                        return Outcome::Closed;
                    }
                    timer.as_mut().reset(deadline);
                }
                () = &mut stop, if buf.is_empty() => return Outcome::Closed,
            }
        };
        let Some(req) = request::build(&mut buf, len, head_request, target.clone(), &spans) else {
            return Outcome::HandOver(io, buf.freeze());
        };
        let response = gw.handle(req, info).await;
        let close = close || cancel.is_cancelled();
        let now = gw.clock().now();
        match response::write(&mut io, &mut out, response, head_request, close, now).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "connection write failed");
                return Outcome::Closed;
            }
        }
    }
}
