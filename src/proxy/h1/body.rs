//! A response body read straight off the upstream connection, by length, by chunks or to the
//! close. Once it has been read to its end, a connection that may carry another request goes
//! back to its pool; a body dropped before its end drops (closes) the connection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::head::{Framing, MAX_HEAD};
use super::{Conn, IoError, Reuse};
use crate::body::BoxError;

/// The longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;
/// How much is read from the socket at a time.
const READ_SIZE: usize = 16 * 1024;

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailers up to the empty line.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// The rest of a response body, on its connection.
#[derive(Debug)]
pub struct DirectBody {
    conn: Option<Conn>,
    pool: Arc<dyn Reuse>,
    state: State,
    reusable: bool,
}

impl DirectBody {
    /// The body framed by `framing` on `conn` (whose buffer may hold its first bytes).
    pub(super) fn new(conn: Conn, pool: Arc<dyn Reuse>, framing: Framing, reusable: bool) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::Close => State::Close,
        };
        Self {
            conn: Some(conn),
            pool,
            state,
            reusable,
        }
    }

    /// The connection goes back to its pool if it can carry another request: framed body
    /// read to its end, nothing extra after it.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            self.pool.reuse(conn);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.state {
                State::Done | State::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx, READ_SIZE))? == 0 {
                        return Poll::Ready(Some(Err(IoError::EndedEarly.into())));
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    self.state = State::Length(left - take as u64);
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(take).freeze()))));
                }
                State::Close => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx, READ_SIZE))? == 0 {
                        self.reusable = false;
                        self.finish();
                        return Poll::Ready(None);
                    }
                    let all = conn.buf.len();
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(all).freeze()))));
                }
                State::Chunked(step) => match chunk_step(&mut conn.buf, step)? {
                    Step::Next(next) => self.state = State::Chunked(next),
                    Step::Data(bytes, next) => {
                        self.state = State::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Step::End(trailers) => {
                        self.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Step::More => {
                        if ready!(conn.poll_fill(cx, READ_SIZE))? == 0 {
                            return Poll::Ready(Some(Err(IoError::EndedEarly.into())));
                        }
                    }
                },
            }
        }
    }
}

impl HttpBody for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What one step through a chunked body found.
#[derive(Debug)]
enum Step {
    /// Moved on, nothing to hand out yet.
    Next(Chunk),
    /// Data, and where the body is after it.
    Data(Bytes, Chunk),
    /// The end, with the trailers if there were any.
    End(Option<HeaderMap>),
    /// The buffer holds too little: read more.
    More,
}

/// One step of the chunked decoder over the bytes buffered so far (RFC 9112 s7.1).
fn chunk_step(buf: &mut BytesMut, step: Chunk) -> Result<Step, IoError> {
    match step {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            // Long extensions are refused, as hyper's decoder does (nothing uses them).
            Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                Err(IoError::Chunked)
            }
            Ok(httparse::Status::Complete((used, size))) => {
                let _ = buf.split_to(used);
                Ok(Step::Next(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                }))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => Err(IoError::Chunked),
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err(IoError::Chunked),
        },
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let rest = left - take as u64;
            let next = if rest == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(rest)
            };
            Ok(Step::Data(buf.split_to(take).freeze(), next))
        }
        Chunk::DataEnd => match buf.get(..2) {
            None if buf.first().is_none_or(|b| *b == b'\r') => Ok(Step::More),
            Some(b"\r\n") => {
                let _ = buf.split_to(2);
                Ok(Step::Next(Chunk::Size))
            }
            _ => Err(IoError::Chunked),
        },
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                return Ok(Step::End(None));
            }
            let mut slots = [httparse::EMPTY_HEADER; super::head::MAX_HEADERS];
            match httparse::parse_headers(buf, &mut slots) {
                Ok(httparse::Status::Complete((used, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields {
                        let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(f.name.as_bytes()),
                            HeaderValue::from_bytes(f.value),
                        ) else {
                            return Err(IoError::Chunked);
                        };
                        trailers.append(name, value);
                    }
                    let _ = buf.split_to(used);
                    Ok(Step::End(Some(trailers)))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(IoError::Chunked),
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err(IoError::Chunked),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the decoder over `input` fed `piece` bytes at a time; returns the data and the
    /// trailers.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Option<HeaderMap>), IoError> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut step = Chunk::Size;
        let mut data = Vec::new();
        loop {
            match chunk_step(&mut buf, step)? {
                Step::Next(n) => step = n,
                Step::Data(b, n) => {
                    data.extend_from_slice(&b);
                    step = n;
                }
                Step::End(t) => {
                    assert!(buf.is_empty(), "bytes left after the body");
                    return Ok((data, t));
                }
                Step::More => {
                    if fed >= input.len() {
                        return Err(IoError::EndedEarly);
                    }
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunks_decode_whatever_the_reads_split() {
        let input = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for piece in [1, 2, 3, 7, 64] {
            let (data, trailers) = decode(input, piece).unwrap();
            assert_eq!(data, b"hello, world", "piece {piece}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn trailers_come_out_as_a_frame() {
        let input = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n";
        for piece in [1, 5, 64] {
            let (data, trailers) = decode(input, piece).unwrap();
            assert_eq!(data, b"abc");
            let t = trailers.unwrap();
            assert_eq!(t["grpc-status"], "0");
            assert_eq!(t["x-t"], "1");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for input in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(decode(input, 64), Err(IoError::Chunked)),
                "{input:?}"
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE + 10));
        assert!(matches!(
            decode(long.as_bytes(), 64 * 1024),
            Err(IoError::Chunked)
        ));
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        assert!(matches!(decode(b"5\r\nhel", 64), Err(IoError::EndedEarly)));
    }
}
