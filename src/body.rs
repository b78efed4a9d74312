//! The body types: [`Body`] for every answer (the upstream's streamed body, or a page of our
//! own) and [`RequestBody`] for every request (a client's streamed body, or one built in
//! process). Enums instead of boxed trait objects, so proxying allocates nothing for bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

/// A boxed error, as request-body errors travel.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
pub enum Body {
    /// No body.
    Empty,
    /// A complete body made by the gateway; taken on first poll.
    Full(Option<Bytes>),
    /// The upstream's body, streamed frame by frame.
    Upstream(Incoming),
    /// A body read by other means (the direct HTTP/1.1 path's, straight off its connection).
    Stream(Pin<Box<dyn HttpBody<Data = Bytes, Error = BoxError> + Send>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Full(d) => f.debug_tuple("Full").field(d).finish(),
            Self::Upstream(b) => f.debug_tuple("Upstream").field(b).finish(),
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl Body {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::Full(Some(data.into()))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            Self::Stream(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty | Self::Full(None) => true,
            Self::Full(Some(d)) => d.is_empty(),
            Self::Upstream(b) => b.is_end_stream(),
            Self::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty | Self::Full(None) => SizeHint::with_exact(0),
            Self::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Self::Upstream(b) => b.size_hint(),
            Self::Stream(b) => b.size_hint(),
        }
    }
}

/// A request body: the client's, streamed, or a complete one built in process (the pipeline's
/// stage tests drive it with built requests and no socket).
#[derive(Debug)]
pub enum RequestBody {
    /// A client's body, streamed frame by frame.
    Incoming(Incoming),
    /// A complete body; taken on first poll.
    Full(Option<Bytes>),
}

impl From<Incoming> for RequestBody {
    fn from(b: Incoming) -> Self {
        Self::Incoming(b)
    }
}

impl From<Bytes> for RequestBody {
    fn from(b: Bytes) -> Self {
        Self::Full(Some(b))
    }
}

impl From<http_body_util::Full<Bytes>> for RequestBody {
    fn from(mut b: http_body_util::Full<Bytes>) -> Self {
        // A `Full` holds at most one frame and is always ready: one poll takes it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut b).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => Self::Full(frame.into_data().ok()),
            _ => Self::Full(None),
        }
    }
}

impl From<http_body_util::Empty<Bytes>> for RequestBody {
    fn from(_: http_body_util::Empty<Bytes>) -> Self {
        Self::Full(None)
    }
}

impl From<String> for RequestBody {
    fn from(s: String) -> Self {
        Self::Full(Some(Bytes::from(s)))
    }
}

impl From<&'static str> for RequestBody {
    fn from(s: &'static str) -> Self {
        Self::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}

impl From<()> for RequestBody {
    fn from((): ()) -> Self {
        Self::Full(None)
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(None) => true,
            Self::Full(Some(d)) => d.is_empty(),
            Self::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Self::Incoming(b) => b.size_hint(),
        }
    }
}
