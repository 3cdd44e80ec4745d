//! A deadline on a request's body, counted from the moment its headers
//! arrived (`[server] body_timeout_secs`).
//!
//! Without it a client that sends its headers and then its body a byte at a
//! time holds one of the replica's `max_in_flight` slots for as long as it
//! likes; a few hundred such clients stop a replica. Past the deadline the
//! body reports an error to whoever reads it (the edge's own form read, an
//! extractor), and the edge answers 408 `request.body_timeout` and closes
//! the connection, whatever the reader made of the error.
//!
//! The timer is armed only when the body is not already there: a small body
//! arrives with its headers and never touches the timer wheel.

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a body past its deadline reports.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// What the edge keeps of a body it wrapped: whether its deadline passed.
#[derive(Debug, Clone)]
pub struct Deadline(Arc<AtomicBool>);

impl Deadline {
    /// True once a read of the body found it past its deadline.
    pub fn expired(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `body` with a deadline `limit` from now, and the handle that tells
/// whether it passed. A body already complete (no body, or `Content-Length:
/// 0`) is returned as it is.
pub fn wrap(body: Body, limit: Duration) -> (Body, Option<Deadline>) {
    if body.is_end_stream() {
        return (body, None);
    }
    let expired = Arc::new(AtomicBool::new(false));
    let wrapped = Body::new(DeadlineBody {
        inner: body,
        at: Instant::now() + limit,
        sleep: None,
        expired: expired.clone(),
    });
    (wrapped, Some(Deadline(expired)))
}

struct DeadlineBody {
    inner: Body,
    at: Instant,
    /// Armed the first time the body is not ready.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.expired.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame),
            Poll::Pending => {
                let at = this.at;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.expired.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose chunks come from a channel.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl HttpBody for Channel {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    /// A body whose first chunk comes at once and whose second comes after
    /// `gap`.
    fn trickle(gap: Duration) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"grant_type=")).await.ok();
            tokio::time::sleep(gap).await;
            tx.send(Bytes::from_static(b"refresh_token")).await.ok();
        });
        Body::new(Channel(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_is_read_whole() {
        let (body, deadline) = wrap(trickle(Duration::from_secs(9)), Duration::from_secs(10));
        let read = axum::body::to_bytes(body, 1024).await.unwrap();
        assert_eq!(&read[..], b"grant_type=refresh_token");
        assert!(!deadline.unwrap().expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_arriving_at_its_deadline_is_an_error_and_marked() {
        let (body, deadline) = wrap(trickle(Duration::from_secs(11)), Duration::from_secs(10));
        let started = Instant::now();
        let err = axum::body::to_bytes(body, 1024).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut found = false;
        while let Some(e) = source {
            found |= e.is::<BodyTimedOut>();
            source = e.source();
        }
        assert!(found, "{err}");
        assert!(deadline.unwrap().expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_gets_no_deadline() {
        let (body, deadline) = wrap(Body::empty(), Duration::from_secs(1));
        assert!(deadline.is_none());
        assert!(axum::body::to_bytes(body, 16).await.unwrap().is_empty());
    }
}
