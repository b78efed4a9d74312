//! The direct HTTP/1.1 path to upstreams, for requests without a body (`GET`, `HEAD`).
//!
//! Why by hand, next to hyper's client: hyper's `client::conn` hands every request to the
//! connection's own task through a channel and the response back through another, and keeps
//! each connection's state behind that task; on the proxy's hottest path (a small `GET`)
//! that dispatch was the largest cost left on our side of the kernel (docs/architecture.md,
//! "The upstream connection pool"). Here the request's own task writes the head on a pooled connection and
//! reads the answer; the body is read off the same connection as the client takes it, and
//! the connection goes back to the pool at its end. Requests with a body, upgrades
//! (WebSocket) and HTTP/2 stay on hyper's client, which streams bodies both ways.

pub mod body;
pub mod head;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use http::{Method, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use self::head::Head;
use crate::body::Body;

/// Where a connection goes once its response has been read to the end and it may carry
/// another request (the upstream's pool).
pub trait Reuse: Send + Sync + std::fmt::Debug {
    /// Keeps `conn` for a later request.
    fn reuse(&self, conn: Conn);
}

/// Read buffer kept per connection (grown for larger heads, up to [`head::MAX_HEAD`]).
const BUF: usize = 8 * 1024;

/// Failures on the direct path.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The socket failed.
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before answering")]
    Closed,
    /// The upstream closed the connection inside a body.
    #[error("upstream closed the connection inside the body")]
    EndedEarly,
    /// The response head is not acceptable.
    #[error(transparent)]
    Head(#[from] head::HeadError),
    /// A malformed chunked body.
    #[error("malformed chunked body from upstream")]
    Chunked,
}

/// A connection's socket: plain TCP or TLS.
#[derive(Debug)]
pub enum Io {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream connection on the direct path, with what was read past the last response.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// The request head being sent (kept to spare an allocation per request).
    pub(super) out: Vec<u8>,
    /// When it last went idle.
    pub(super) since: Instant,
}

/// Lengths only: the buffers hold request and response heads (cookies, identity headers,
/// the assertion), which must never reach a log.
impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("io", &self.io)
            .field("buffered", &self.buf.len())
            .field("head_len", &self.out.len())
            .field("since", &self.since)
            .finish()
    }
}

impl Conn {
    /// A fresh connection.
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(BUF),
            out: Vec::with_capacity(1024),
            since: Instant::now(),
        }
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<usize, IoError>> {
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
            .map_err(IoError::Io)
    }

    /// Whether a kept connection may still carry a request: nothing arrived on it while it
    /// was idle. An upstream that closed it left an end of stream; one that answered out of
    /// turn (a `408` before closing an idle connection) left bytes that would otherwise be
    /// read as the next request's answer. One non-blocking `recv(2)`, so it is asked only of
    /// connections idle for a while.
    pub(super) fn still_open(&self) -> bool {
        let tcp = match &self.io {
            Io::Plain(s) => s,
            // Any byte below TLS (an alert, a record) means the same.
            Io::Tls(s) => s.get_ref().0,
        };
        matches!(tcp.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    async fn fill(&mut self) -> Result<usize, IoError> {
        std::future::poll_fn(|cx| self.poll_fill(cx, BUF)).await
    }
}

/// A failed exchange, and whether the request may go again on a new connection: the upstream
/// closed a kept connection before a byte of the answer (it may have closed it while idle).
#[derive(Debug)]
pub struct Failed {
    /// What went wrong.
    pub error: IoError,
    /// Nothing of a response arrived.
    pub unanswered: bool,
    /// The request head, to send again.
    pub out: Vec<u8>,
}

/// Sends the head in `conn.out` and reads the response head; the body follows as it is
/// read. Small bodies that came with the head are handed over whole and the connection goes
/// back to `pool` at once.
pub async fn exchange<P: Reuse + 'static>(
    mut conn: Conn,
    pool: &Arc<P>,
    method: &Method,
) -> Result<Response<Body>, Failed> {
    let fail = |error: IoError, unanswered: bool, out: Vec<u8>| Failed {
        error,
        unanswered,
        out,
    };
    // Flushed too: TLS may keep records back that a plain socket would have sent (for TCP
    // the flush is a no-op).
    let written = match conn.io.write_all(&conn.out).await {
        Ok(()) => conn.io.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        let out = std::mem::take(&mut conn.out);
        return Err(fail(IoError::Io(e), true, out));
    }
    let head = loop {
        match head::parse(&mut conn.buf, method) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => return Err(fail(e.into(), false, Vec::new())),
        }
        let answered = !conn.buf.is_empty();
        match conn.fill().await {
            Ok(0) => {
                let out = std::mem::take(&mut conn.out);
                return Err(fail(IoError::Closed, !answered, out));
            }
            Ok(_) => {}
            Err(IoError::Io(e)) if !answered && e.kind() == io::ErrorKind::ConnectionReset => {
                let out = std::mem::take(&mut conn.out);
                return Err(fail(IoError::Io(e), true, out));
            }
            Err(e) => return Err(fail(e, false, Vec::new())),
        }
    };
    Ok(respond(conn, pool, head))
}

fn respond<P: Reuse + 'static>(mut conn: Conn, pool: &Arc<P>, head: Head) -> Response<Body> {
    // The request head is no longer needed (it was kept for a second try until an answer
    // came); its capacity is.
    conn.out.clear();
    let Head {
        status,
        headers,
        framing,
        reusable,
    } = head;
    let body = match framing {
        head::Framing::Empty => {
            if reusable && conn.buf.is_empty() {
                pool.reuse(conn);
            }
            Body::Empty
        }
        // The common case: the whole body came with the head.
        head::Framing::Length(n) if usize::try_from(n).is_ok_and(|n| n <= conn.buf.len()) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let data = conn.buf.split_to(n).freeze();
            if reusable && conn.buf.is_empty() {
                pool.reuse(conn);
            }
            Body::full(data)
        }
        framing => Body::Stream(Box::pin(body::DirectBody::new(
            conn,
            pool.clone() as Arc<dyn Reuse>,
            framing,
            reusable,
        ))),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heads a connection keeps carry cookies, identity headers and the assertion: its
    /// debug form (a pool may be printed whole) shows their lengths only.
    #[tokio::test]
    async fn debug_never_shows_the_heads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = Conn::new(Io::Plain(stream));
        conn.out
            .extend_from_slice(b"GET / HTTP/1.1\r\ncookie: session=s3cr3t\r\n\r\n");
        conn.buf
            .extend_from_slice(b"HTTP/1.1 200 OK\r\nset-cookie: t0k3n\r\n");
        let shown = format!("{conn:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0k3n"),
            "{shown}"
        );
        assert!(shown.contains("head_len"), "{shown}");
    }
}
