//! Responses of the HTTP/1.1 fast path, framed as hyper's server frames them (RFC 9112 s6):
//! `Content-Length` when the length is known (the handler's header, else the body's exact
//! size), chunked otherwise; no body after `HEAD`, `204` or `304`; `Date` added when missing;
//! `Connection: close` added when the connection ends after this answer. A `Transfer-Encoding`
//! from the handler is not relayed: framing is this connection's business (the proxy already
//! drops the upstream's, RFC 9110 s7.6.1).

use std::io::Write as _;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{StatusCode, response::Parts};
use http_body::Body as HttpBody;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::body::Body;

use crate::http::lists_token;

/// Data frames at least this long are written straight from their buffer instead of being
/// copied behind the head or a chunk line.
const WRITE_THROUGH: usize = 4096;

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (`HEAD`, `204`, `304`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// Writes the head into `out`; returns the framing and whether the connection must end after
/// this answer (`close` on entry: it ends anyway).
fn encode_head(
    parts: &Parts,
    body: &Body,
    head_request: bool,
    mut close: bool,
    now: Duration,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut declared: Option<u64> = None;
    let mut has_date = false;
    let mut said_close = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            // The first valid one counts; others (and garbage) are dropped, never relayed as
            // a second framing.
            match std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.parse().ok())
            {
                Some(n) if declared.is_none() => declared = Some(n),
                _ => {}
            }
            continue;
        }
        if name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONNECTION && lists_token(value.as_bytes(), b"close") {
            said_close = true;
        }
        if name == DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_length = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let no_body = head_request || no_length;
    let exact = exact_len(body);
    let framing = match (declared.or(exact), no_body) {
        (_, true) => Framing::None,
        (Some(n), false) => Framing::Length(n),
        (None, false) => Framing::Chunked,
    };
    match (declared.or(exact), framing) {
        (_, Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // After `HEAD` the length of the body a GET would get, when known and not zero-by-
        // default: hyper writes it the same way.
        (Some(n), _) if !(no_length || head_request && declared.is_none() && n == 0) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        _ => {}
    }
    if said_close {
        close = true;
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        super::date::extend(out, now);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// The body's exact length, when it says.
fn exact_len(body: &Body) -> Option<u64> {
    match body {
        Body::Empty | Body::Full(None) => Some(0),
        Body::Full(Some(d)) => Some(d.len() as u64),
        other => other.size_hint().exact(),
    }
}

/// Writes a whole answer, dated `now` (since the Unix epoch) unless it has a date. Returns whether the connection may carry another request: not when
/// `close` was asked, the answer said so, or the body broke off or did not match its length
/// (the client then sees the connection end, as with hyper).
pub(super) async fn write<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    response: http::Response<Body>,
    head_request: bool,
    close: bool,
    now: Duration,
) -> std::io::Result<bool> {
    let (mut parts, body) = response.into_parts();
    if parts.status.is_informational() {
        // No 1xx (nor 101 outside an upgrade, which never takes this path) from a handler:
        // hyper answers 500 too.
        tracing::warn!(status = %parts.status, "a handler answered 1xx: 500 instead");
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        return write_parts(io, out, &parts, Body::Empty, head_request, true, now).await;
    }
    write_parts(io, out, &parts, body, head_request, close, now).await
}

async fn write_parts<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    parts: &Parts,
    body: Body,
    head_request: bool,
    close: bool,
    now: Duration,
) -> std::io::Result<bool> {
    out.clear();
    let (framing, close) = encode_head(parts, &body, head_request, close, now, out);
    let whole = match framing {
        Framing::None => true,
        Framing::Length(n) => match body {
            Body::Empty | Body::Full(None) => n == 0,
            Body::Full(Some(d)) if d.len() as u64 == n => {
                push(io, out, &d).await?;
                true
            }
            other => stream(io, out, other, framing).await?,
        },
        Framing::Chunked => stream(io, out, body, framing).await?,
    };
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await?;
    Ok(whole && !close)
}

/// Appends `data` behind what `out` holds, or writes both when `data` is long.
async fn push<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    data: &[u8],
) -> std::io::Result<()> {
    if data.len() < WRITE_THROUGH {
        out.extend_from_slice(data);
        return Ok(());
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.write_all(data).await
}

/// Streams a body frame by frame; what is ready is written together. Trailers are dropped:
/// requests that ask for them (`TE: trailers`) never take this path. Returns whether the body
/// went out whole.
async fn stream<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    mut body: Body,
    framing: Framing,
) -> std::io::Result<bool> {
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::Chunked | Framing::None => u64::MAX,
    };
    loop {
        let waiting = !out.is_empty();
        // What is ready goes out with what is already buffered; before waiting for more,
        // the buffer is written.
        let next = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if waiting => Poll::Ready(Next::Pending),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(Next::End),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Next::Failed(e)),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(match frame.into_data() {
                Ok(d) => Next::Data(d),
                Err(_) => Next::Trailers,
            }),
        })
        .await;
        match next {
            Next::Pending => {
                io.write_all(out).await?;
                out.clear();
            }
            Next::Trailers => {}
            Next::Data(d) if d.is_empty() => {}
            Next::Data(d) => match framing {
                Framing::Chunked => {
                    let _ = write!(out, "{:x}\r\n", d.len());
                    push(io, out, &d).await?;
                    out.extend_from_slice(b"\r\n");
                }
                _ => {
                    let len = d.len() as u64;
                    if len > left {
                        // More than declared: what fits goes, then the connection ends.
                        let fits = usize::try_from(left).unwrap_or(usize::MAX);
                        push(io, out, &d[..fits]).await?;
                        return Ok(false);
                    }
                    left -= len;
                    push(io, out, &d).await?;
                }
            },
            Next::End => {
                return Ok(match framing {
                    Framing::Chunked => {
                        out.extend_from_slice(b"0\r\n\r\n");
                        true
                    }
                    _ => left == 0,
                });
            }
            Next::Failed(e) => {
                tracing::debug!(error = %e, "response body failed: closing the connection");
                return Ok(false);
            }
        }
    }
}

enum Next {
    Pending,
    Data(Bytes),
    Trailers,
    End,
    Failed(crate::body::BoxError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(784_111_777);

    fn head(
        resp: http::Response<Body>,
        head_request: bool,
        close: bool,
    ) -> (String, Framing, bool) {
        let (parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let (f, c) = encode_head(&parts, &body, head_request, close, NOW, &mut out);
        (String::from_utf8(out).unwrap(), f, c)
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: Body) -> http::Response<Body> {
        let mut b = http::Response::builder().status(status);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(body).unwrap()
    }

    #[test]
    fn full_bodies_get_their_length_and_a_date() {
        let (h, f, c) = head(
            resp(200, &[("x-a", "1")], Body::full("hello")),
            false,
            false,
        );
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "),
            "{h}"
        );
        assert!(
            h.ends_with("date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"),
            "{h}"
        );
        assert_eq!((f, c), (Framing::Length(5), false));
        let (h, f, _) = head(resp(404, &[], Body::Empty), false, false);
        assert!(
            h.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"),
            "{h}"
        );
        assert_eq!(f, Framing::Length(0));
    }

    #[test]
    fn a_declared_length_is_kept_and_never_doubled() {
        let r = resp(
            200,
            &[
                ("content-length", "7"),
                ("content-length", "9"),
                ("transfer-encoding", "chunked"),
            ],
            Body::Empty,
        );
        let (h, f, _) = head(r, true, false);
        assert_eq!(h.matches("content-length").count(), 1, "{h}");
        assert!(h.contains("content-length: 7\r\n"), "{h}");
        assert!(!h.contains("transfer-encoding"), "{h}");
        assert_eq!(f, Framing::None);
    }

    #[test]
    fn no_body_after_head_204_and_304() {
        let (h, f, _) = head(resp(204, &[], Body::full("x")), false, false);
        assert!(!h.contains("content-length"), "{h}");
        assert_eq!(f, Framing::None);
        let (h, f, _) = head(
            resp(304, &[("content-length", "12")], Body::Empty),
            false,
            false,
        );
        assert!(!h.contains("content-length"), "{h}");
        assert_eq!(f, Framing::None);
        let (h, f, _) = head(resp(200, &[], Body::Empty), true, false);
        assert!(!h.contains("content-length"), "{h}");
        assert_eq!(f, Framing::None);
        let (h, _, _) = head(resp(200, &[], Body::full("abc")), true, false);
        assert!(h.contains("content-length: 3\r\n"), "{h}");
    }

    #[test]
    fn closing_is_said_once() {
        let (h, _, c) = head(resp(200, &[], Body::Empty), false, true);
        assert!(h.contains("connection: close\r\n"), "{h}");
        assert!(c);
        let (h, _, c) = head(
            resp(200, &[("connection", "close")], Body::Empty),
            false,
            false,
        );
        assert_eq!(h.matches("close").count(), 1, "{h}");
        assert!(c);
    }

    #[tokio::test]
    async fn unknown_lengths_are_chunked_and_end_with_a_last_chunk() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = Body::Stream(Box::pin(Fed(rx)));
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        tx.send(Bytes::from(vec![b'z'; 5000])).await.unwrap();
        drop(tx);
        let mut wire = Vec::new();
        let mut out = Vec::new();
        let again = write(&mut wire, &mut out, resp(200, &[], body), false, false, NOW)
            .await
            .unwrap();
        assert!(again);
        let text = String::from_utf8(wire).unwrap();
        let (h, b) = text.split_once("\r\n\r\n").unwrap();
        assert!(h.contains("transfer-encoding: chunked"), "{h}");
        assert_eq!(
            b,
            format!("3\r\nabc\r\n1388\r\n{}\r\n0\r\n\r\n", "z".repeat(5000))
        );
    }

    #[tokio::test]
    async fn a_short_or_long_body_ends_the_connection() {
        let mut wire = Vec::new();
        let mut out = Vec::new();
        let r = resp(200, &[("content-length", "10")], Body::full("abc"));
        assert!(
            !write(&mut wire, &mut out, r, false, false, NOW)
                .await
                .unwrap()
        );
        let mut wire = Vec::new();
        let r = resp(200, &[("content-length", "2")], Body::full("abcdef"));
        assert!(
            !write(&mut wire, &mut out, r, false, false, NOW)
                .await
                .unwrap()
        );
        assert!(
            wire.ends_with(b"\r\n\r\nab"),
            "{}",
            String::from_utf8_lossy(&wire)
        );
    }

    /// A body fed through a channel, frame by frame.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for Fed {
        type Data = Bytes;
        type Error = crate::body::BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|d| d.map(|d| Ok(http_body::Frame::data(d))))
        }
    }
}
