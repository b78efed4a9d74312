//! Request heads for the HTTP/1.1 fast path: parsed with httparse (the parser and the default
//! settings hyper's server uses, so both accept the same heads), and taken only when the
//! request is one the fast path serves: see [`Verdict`].

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::body::RequestBody;
use crate::http::lists_token;

/// The most header lines a head may have; more are hyper's to refuse (`431`), as it does by
/// default.
pub(super) const MAX_HEADERS: usize = 100;

/// The longest request target hyper accepts; longer ones are hyper's to refuse (`414`).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// What a look at the buffered bytes found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The head is not complete yet.
    Partial,
    /// A complete head the fast path serves: `GET` or `HEAD`, HTTP/1.1, an origin-form target,
    /// no body (neither `Content-Length` nor `Transfer-Encoding`), no `Upgrade`, `Expect` or
    /// `TE`. `len` is the head's length, `close` whether it asked for `Connection: close`.
    Simple {
        /// Length of the head in the buffer.
        len: usize,
        /// The method is `HEAD` (else `GET`).
        head: bool,
        /// The client asked to close after this answer.
        close: bool,
    },
    /// Anything else: a body, an upgrade, HTTP/1.0 or HTTP/2's preface, another form of
    /// target, or a head httparse refuses. hyper takes the connection from here and answers
    /// (or refuses) exactly as it always did.
    Other,
}

/// Where a header's name and value lie in the head.
pub(super) type Span = (Range<usize>, Range<usize>);

/// Looks at `buf`; for a simple request, records where its target and headers lie.
pub(super) fn inspect(buf: &[u8], target: &mut Range<usize>, spans: &mut Vec<Span>) -> Verdict {
    // Uninitialised slots, as hyper's server does: zeroing a hundred headers each request
    // would cost more than reading a short head.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Verdict::Partial,
        Err(_) => return Verdict::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Verdict::Other;
    };
    if !matches!(method, "GET" | "HEAD") || !path.starts_with('/') || path.len() > MAX_URI_LEN {
        return Verdict::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    *target = at(path.as_bytes());
    spans.clear();
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if [
            "content-length",
            "transfer-encoding",
            "upgrade",
            "expect",
            "te",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        {
            return Verdict::Other;
        }
        if name.eq_ignore_ascii_case(b"connection") && lists_token(h.value, b"close") {
            close = true;
        }
        spans.push((at(name), at(h.value)));
    }
    // From the parsed method, never from the buffer's first bytes: httparse skips empty lines
    // before the request line (RFC 9112 s2.2), and a HEAD answered as a GET would put a body
    // where the client expects the next answer.
    Verdict::Simple {
        len,
        head: method == "HEAD",
        close,
    }
}

/// Builds the request from a head [`inspect`] found simple, taking it off the front of `buf`.
/// Names and values are slices of the one head buffer, not copies. `None` if the `http` crate
/// refuses a part httparse let through; `buf` is then unchanged.
pub(super) fn build(
    buf: &mut BytesMut,
    len: usize,
    head_method: bool,
    target: Range<usize>,
    spans: &[Span],
) -> Option<Request<RequestBody>> {
    let method = if head_method {
        Method::HEAD
    } else {
        Method::GET
    };
    let head: Bytes = buf.split_to(len).freeze();
    let Some((uri, headers)) = parts(&head, target, spans) else {
        restore(buf, &head);
        return None;
    };
    let mut req = Request::new(RequestBody::Full(None));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

/// The target and headers, as slices of the one frozen head. Checked although httparse
/// checked too: both checks are cheap, and a part the `http` crate would refuse must never
/// reach the pipeline unchecked.
fn parts(head: &Bytes, target: Range<usize>, spans: &[Span]) -> Option<(Uri, HeaderMap)> {
    let uri = Uri::from_maybe_shared(head.slice(target)).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, value) in spans {
        let name = HeaderName::from_bytes(&head[name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// Puts a head taken off `buf` back in front of what follows it.
fn restore(buf: &mut BytesMut, head: &[u8]) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(raw: &str) -> Verdict {
        inspect(raw.as_bytes(), &mut (0..0), &mut Vec::new())
    }

    #[test]
    fn plain_gets_and_heads_are_simple() {
        let raw = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: k=v\r\n\r\n";
        assert_eq!(
            look(raw),
            Verdict::Simple {
                len: raw.len(),
                head: false,
                close: false
            }
        );
        // Empty lines before the request line are skipped (RFC 9112 s2.2); the method still
        // comes from the request line.
        let raw = "\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            look(raw),
            Verdict::Simple {
                len: raw.len(),
                head: true,
                close: false
            }
        );
        assert!(matches!(
            look("HEAD / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n"),
            Verdict::Simple { close: true, .. }
        ));
        assert_eq!(look("GET / HTTP/1.1\r\nHost: x\r\n"), Verdict::Partial);
        assert_eq!(look("GE"), Verdict::Partial);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "DELETE / HTTP/1.1\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(look(raw), Verdict::Other, "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            look(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Verdict::Other
        );
    }

    #[test]
    fn built_requests_hold_the_head_and_leave_what_follows() {
        let raw = "GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next";
        let mut target = 0..0;
        let mut spans = Vec::new();
        let Verdict::Simple { len, head, close } = inspect(raw.as_bytes(), &mut target, &mut spans)
        else {
            panic!("not simple")
        };
        assert!(!close && !head);
        let mut buf = BytesMut::from(raw);
        let req = build(&mut buf, len, head, target, &spans).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/p");
        assert_eq!(req.uri().query(), Some("q=1"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "a.test");
        let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn obs_text_values_pass_as_hyper_passes_them() {
        let raw = b"GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n";
        let mut target = 0..0;
        let mut spans = Vec::new();
        let Verdict::Simple { len, head, .. } = inspect(raw, &mut target, &mut spans) else {
            panic!("not simple")
        };
        let mut buf = BytesMut::from(&raw[..]);
        let req = build(&mut buf, len, head, target, &spans).unwrap();
        assert_eq!(req.headers()["x-name"].as_bytes(), "café".as_bytes());
    }
}
