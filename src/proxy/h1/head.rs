//! Request and response heads for the direct HTTP/1.1 path: the request head written into a
//! buffer, the response head parsed (httparse) into status, headers and body framing.
//!
//! Body framing follows RFC 9112 s6.3: no body for `HEAD`, 1xx, 204 and 304; a
//! `Transfer-Encoding` ending in `chunked` wins over `Content-Length` (and the connection is
//! not reused after such a message); another `Transfer-Encoding`, or neither header, means
//! the body runs to the end of the connection; several `Content-Length` values must agree.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};

use crate::proxy::plan::Plan;

/// The largest response head accepted (hyper's default buffer allows about as much).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted (hyper's limit).
pub const MAX_HEADERS: usize = 100;

/// Why a response head is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or a malformed line.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// Longer than [`MAX_HEAD`].
    #[error("response head too large")]
    TooLarge,
    /// A `Content-Length` that is not a number, or values that disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// A header name or value the `http` types refuse.
    #[error("invalid response header")]
    Header,
    /// `101 Switching Protocols` to a request that asked for no switch.
    #[error("upstream switched protocols unasked")]
    Switched,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// The status.
    pub status: StatusCode,
    /// The end-to-end headers (hop-by-hop ones and those `Connection` names are gone).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub reusable: bool,
}

/// Writes the request head: request line in origin form, then the request's headers as
/// `plan` leaves them (names and values were validated by the `http` types: no CR or LF can
/// get in).
pub fn encode(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    plan: &Plan<'_>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    plan.write(headers, out);
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete, read more. On
/// success the head's bytes are taken off `buf` (header values share them, uncopied); 1xx
/// interim responses (100 Continue, 103 Early Hints) are dropped, as hyper's client does.
pub fn parse(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, HeadError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(HeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e)),
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| HeadError::Malformed(httparse::Error::Status))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(HeadError::Switched);
        }
        if status.is_informational() {
            let _ = buf.split_to(len);
            continue;
        }
        let http10 = res.version == Some(0);
        // Where each header sits in `buf`, so the values can share the frozen head.
        let base = buf.as_ptr() as usize;
        let mut spans = [Span::default(); MAX_HEADERS];
        let count = res.headers.len();
        for (slot, h) in spans.iter_mut().zip(res.headers.iter()) {
            // Offsets within a head of at most MAX_HEAD bytes fit in u32.
            let at = |p: *const u8| u32::try_from(p as usize - base).unwrap_or(u32::MAX);
            let (n, v) = (at(h.name.as_ptr()), at(h.value.as_ptr()));
            *slot = Span {
                name: (n, n + h.name.len() as u32),
                value: (v, v + h.value.len() as u32),
            };
        }
        let head: Bytes = buf.split_to(len).freeze();
        return build(&head, &spans[..count], status, method, http10).map(Some);
    }
}

/// Where a header's name and value sit in the head.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

fn build(
    head: &Bytes,
    spans: &[Span],
    status: StatusCode,
    method: &Method,
    http10: bool,
) -> Result<Head, HeadError> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = http10;
    let mut named_in_connection = false;
    for span in spans {
        let (n0, n1) = (span.name.0 as usize, span.name.1 as usize);
        let (v0, v1) = (span.value.0 as usize, span.value.1 as usize);
        let name = HeaderName::from_bytes(head.get(n0..n1).ok_or(HeadError::Header)?)
            .map_err(|_| HeadError::Header)?;
        let raw = head.get(v0..v1).ok_or(HeadError::Header)?;
        if name == CONTENT_LENGTH {
            let n = content_length(raw)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides (a later header line continues the list).
            chunked = last_token(raw).eq_ignore_ascii_case(b"chunked");
            continue;
        } else if name == CONNECTION {
            for token in raw.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close &= !http10;
                } else if !token.is_empty() {
                    named_in_connection = true;
                }
            }
            // Hop-by-hop: kept only until the headers it names are known.
            if named_in_connection {
                headers.append(name, value(head, v0, v1)?);
            }
            continue;
        } else if super::super::headers::hop_by_hop(name.as_str().as_bytes()) {
            continue;
        }
        headers.append(name, value(head, v0, v1)?);
    }
    // Cleaned as every upstream response is: what `Connection` names goes, and it goes.
    if named_in_connection {
        super::super::headers::clean_response(&mut headers, false);
    }
    let no_body = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    // A message framed by both headers is suspect (RFC 9112 s6.3): no second request on it.
    let reusable = !close && framing != Framing::Close && !(transfer_encoding && length.is_some());
    Ok(Head {
        status,
        headers,
        framing,
        reusable,
    })
}

fn value(head: &Bytes, from: usize, to: usize) -> Result<HeaderValue, HeadError> {
    HeaderValue::from_maybe_shared(head.slice(from..to)).map_err(|_| HeadError::Header)
}

/// A `Content-Length` value: digits, or a list of equal ones (RFC 9110 s8.6).
fn content_length(raw: &[u8]) -> Result<u64, HeadError> {
    let mut seen: Option<u64> = None;
    for part in raw.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::ContentLength);
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if seen.is_some_and(|s| s != n) {
            return Err(HeadError::ContentLength);
        }
        seen = Some(n);
    }
    seen.ok_or(HeadError::ContentLength)
}

fn last_token(raw: &[u8]) -> &[u8] {
    raw.rsplit(|b| *b == b',')
        .next()
        .unwrap_or(raw)
        .trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, method: &Method) -> Result<Option<Head>, HeadError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse(&mut buf, method)
    }

    fn ok(text: &str) -> Head {
        parsed(text, &Method::GET).unwrap().unwrap()
    }

    #[test]
    fn encodes_the_request_line_and_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("up:80"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode(&Method::GET, "/p?q=1", &h, &Plan::new(false), &mut out);
        assert_eq!(
            out,
            b"GET /p?q=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn content_length_frames_the_body_and_the_head_is_taken_off() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello"[..]);
        let head = parse(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.reusable);
        assert_eq!(head.headers["server"], "x");
        assert_eq!(head.headers["content-length"], "5");
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert!(
            parsed("HTTP/1.1 200 OK\r\nContent-Le", &Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn chunked_wins_over_content_length_and_the_connection_is_not_reused() {
        let h = ok("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.reusable);
        assert!(h.headers.get("transfer-encoding").is_none());
    }

    #[test]
    fn a_transfer_coding_not_ending_in_chunked_reads_to_the_close() {
        let h = ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.reusable);
        let h = ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn disagreeing_content_lengths_are_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                parsed(text, &Method::GET).unwrap_err(),
                HeadError::ContentLength,
                "{text}"
            );
        }
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n").framing,
            Framing::Length(3)
        );
    }

    #[test]
    fn no_body_for_head_204_and_304() {
        let h = parsed(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.headers["content-length"], "9");
        assert!(h.reusable);
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            ok("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").framing,
            Framing::Empty
        );
    }

    #[test]
    fn without_length_the_body_runs_to_the_close() {
        let h = ok("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.reusable);
    }

    #[test]
    fn connection_close_and_http10_end_the_connection() {
        assert!(!ok("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").reusable);
        assert!(!ok("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").reusable);
        assert!(
            ok("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").reusable
        );
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let h = ok(
            "HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(h.headers.get("x-secret").is_none());
        assert!(h.headers.get("keep-alive").is_none());
        assert!(h.headers.get("upgrade").is_none());
        assert!(h.headers.get("connection").is_none());
        assert_eq!(h.headers["x-kept"], "2");
    }

    #[test]
    fn interim_responses_are_skipped_and_101_is_refused() {
        let h = ok(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(
            parsed("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).unwrap_err(),
            HeadError::Switched
        );
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert!(matches!(
            parsed("SSH-2.0-OpenSSH\r\n\r\n", &Method::GET),
            Err(HeadError::Malformed(_))
        ));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parsed(&big, &Method::GET).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            parsed(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::GET).unwrap_err(),
            HeadError::TooLarge
        );
    }
}
