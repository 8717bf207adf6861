//! Write coalescing for one APNs connection: many requests in one `writev`
//! and one TLS record.
//!
//! `h2` flushes its transport whenever it chains a DATA frame of more than
//! 256 bytes instead of copying it, which for APNs payloads is every request:
//! one `writev` (and one TLS record, and one TCP segment for the peer to
//! read) per notification, however many requests are queued. [`Corked`] sits between `h2` and TLS: writes are copied into one
//! buffer and the connection's flushes are deferred; the task that drives the
//! connection writes the buffer out once per pass ([`Cork::poll_drain`]), after
//! `h2` has queued everything it had. Every byte `h2` hands over is written in
//! that same pass, so nothing waits longer than the pass that produced it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write drains them itself: past this the transport's
/// backpressure reaches `h2` again (a slow peer, a full socket buffer).
const HIGH_WATER: usize = 64 * 1024;

/// The transport as `h2` sees it.
pub(super) struct Corked<T> {
    shared: Arc<Mutex<Inner<T>>>,
}

/// The handle the connection's task drains the held bytes with.
pub(super) struct Cork<T> {
    shared: Arc<Mutex<Inner<T>>>,
}

struct Inner<T> {
    io: T,
    /// Bytes written by `h2` and not yet handed to the transport; the first
    /// `handed` of them are.
    held: Vec<u8>,
    handed: usize,
}

/// Wraps `io`: the first for `h2`, the second for the task that drives it.
pub(super) fn cork<T>(io: T) -> (Corked<T>, Cork<T>) {
    let shared = Arc::new(Mutex::new(Inner {
        io,
        held: Vec::with_capacity(16 * 1024),
        handed: 0,
    }));
    (
        Corked {
            shared: shared.clone(),
        },
        Cork { shared },
    )
}

fn lock<T>(shared: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // A panic while holding it leaves only bytes behind: still consistent.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: AsyncWrite + Unpin> Inner<T> {
    /// Hands every held byte to the transport and flushes it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.handed < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.handed..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.handed += n;
        }
        self.held.clear();
        self.handed = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_hold(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.held.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for buf in bufs {
            self.held.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> Cork<T> {
    /// Writes out what `h2` wrote since the last drain. Called by the
    /// connection's task after each pass over the connection; `Pending`
    /// registers the task for the socket's writability.
    pub(super) fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.shared).poll_drain(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        lock(&self.shared).poll_hold(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        lock(&self.shared).poll_hold(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Deferred: the connection's task drains after `h2`'s pass. Past
    /// [`HIGH_WATER`] the flush is real, so that `h2` waits for a slow peer.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.shared);
        if inner.held.len() >= HIGH_WATER {
            return inner.poll_drain(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.shared);
        ready!(inner.poll_drain(cx))?;
        Pin::new(&mut inner.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_drain_and_all_go_out_in_order() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut corked, drain) = cork(near);
        corked.write_all(b"first ").await.unwrap();
        let parts = [io::IoSlice::new(b"second "), io::IoSlice::new(b"third")];
        let n = corked.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 12, "every slice is taken at once");
        corked.flush().await.unwrap();
        // Nothing reached the peer: the flush was deferred.
        let mut buf = [0u8; 64];
        assert!(
            futures_util::FutureExt::now_or_never(far.read(&mut buf)).is_none(),
            "bytes went out before the drain"
        );
        std::future::poll_fn(|cx| drain.poll_drain(cx))
            .await
            .unwrap();
        let n = far.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first second third");
    }

    #[tokio::test]
    async fn past_the_high_water_mark_a_flush_is_real() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut corked, _drain) = cork(near);
        let big = vec![7u8; HIGH_WATER];
        corked.write_all(&big).await.unwrap();
        corked.flush().await.unwrap();
        // Already at the peer, without any drain.
        let mut got = vec![0u8; HIGH_WATER];
        let read = futures_util::FutureExt::now_or_never(far.read_exact(&mut got));
        assert!(read.is_some(), "the flush held the bytes back");
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_held_first() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut corked, _drain) = cork(near);
        corked.write_all(b"goaway").await.unwrap();
        corked.shutdown().await.unwrap();
        let mut all = Vec::new();
        far.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"goaway");
    }
}
