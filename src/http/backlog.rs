//! Keeps what a connection has queued below the application to about one frame, so a slow
//! client is shown the present, not a backlog of the past.
//!
//! Three things sit between an output choosing a frame and the client receiving it:
//!
//! - **The kernel's send queue.** Linux grows a socket's send buffer up to `tcp_wmem`'s
//!   maximum (4 MiB here): a 10 fps reader of a 30 fps 1280x720 stream was measured 9.9 s
//!   behind after 15 s with ~3 MB unsent on the server's socket. [`limit_unsent`] sets
//!   `TCP_NOTSENT_LOWAT`, so the socket counts as writable only while fewer than
//!   [`NOTSENT_LOWAT`] bytes wait to be sent, and a write stops taking bytes once that much
//!   is queued. It bounds *unsent* bytes only: bytes in flight (sent, not yet acknowledged)
//!   are left to TCP's congestion window, so a fast client on a long link still gets its full
//!   rate — the queue refills from user space within microseconds of dropping below the mark.
//!
//! - **hyper's write buffer.** hyper asks a response body for its next chunk while up to
//!   `max_buf_size` (64 KiB) of earlier ones are still unwritten: the MJPEG output would
//!   choose frame N+1 while most of frame N (a 720p JPEG is ~40–60 KB) is still in user
//!   space. [`WriteProgress`] counts the bytes each connection has handed to the kernel;
//!   the MJPEG body waits until everything it yielded is counted before it picks the next
//!   frame (the WebSocket output needs no counter: its send completes only once the frame
//!   is written).
//!
//! - **The kernel's granularity.** The low-water mark is checked per socket buffer (up to
//!   64 KiB each with segmentation offload, and on loopback), so a write that starts below
//!   the mark can still leave a whole buffer unsent. Before an output picks the next frame,
//!   [`WriteProgress::drained`] therefore also asks the kernel (`TCP_INFO`) how much is
//!   unsent and waits, at the measured delivery rate, until it is below [`NOTSENT_LOWAT`].
//!
//! So when an output picks a frame, the previous one has been written and less than
//! [`NOTSENT_LOWAT`] of it waits in the kernel. What the client's own kernel has received
//! but its application not yet read is beyond any server's reach: a client that reads
//! slower than the stream keeps its receive buffer full (Linux autotunes it to ~300 KB for
//! a 10 fps reader of 720p, i.e. ~8 frames), and that buffer, not picamd, sets its lag.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// `TCP_NOTSENT_LOWAT`, in bytes: at most this much of a response waits unsent in the
/// kernel before the socket stops taking more. 16 KiB is a third of a 720p JPEG, and
/// 26 ms at 5 Mbit/s: it is refilled long before it runs dry, and it cannot hold a frame.
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Sets [`NOTSENT_LOWAT`] on an accepted socket. Failure only costs latency for slow
/// clients (old kernels, other systems), so it is logged, not fatal.
pub fn limit_unsent(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set; slow clients may lag");
    }
}

/// Shortest and longest wait between two looks at the kernel's unsent bytes.
const DRAIN_POLL_MIN: Duration = Duration::from_millis(1);
const DRAIN_POLL_MAX: Duration = Duration::from_millis(50);
/// Delivery rate assumed when the kernel has no estimate yet (or the client's window is
/// closed), in bytes per second: 1 Mbit/s, so the first look comes back soon.
const FALLBACK_RATE: u64 = 125_000;

/// How many bytes a connection has written to its socket, and a wake-up when that grows.
/// One per connection, shared by its socket wrapper ([`Counted`]) and, through the request's
/// extensions, by the output that waits on it (only one at a time: HTTP/1).
#[derive(Clone)]
pub struct WriteProgress(Arc<Progress>);

struct Progress {
    written: AtomicU64,
    waker: AtomicWaker,
    /// The socket, for `TCP_INFO`; -1 once [`Counted`] (which owns it) is dropped, so a
    /// late look can never reach a descriptor the number was reused for.
    fd: AtomicI32,
}

impl Default for WriteProgress {
    fn default() -> WriteProgress {
        WriteProgress(Arc::new(Progress {
            written: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            fd: AtomicI32::new(-1),
        }))
    }
}

/// The client stopped taking bytes: nothing left the kernel for the stall timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client took no bytes for {0:?}")]
pub struct Stalled(pub Duration);

impl WriteProgress {
    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Acquire)
    }

    /// Ready once at least `target` bytes have been written in all.
    pub fn poll_reached(&self, cx: &mut Context<'_>, target: u64) -> Poll<()> {
        if self.written() >= target {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        // A write between the check and the registration would have found no waker.
        if self.written() >= target {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until at least `target` bytes have been written in all.
    pub async fn reached(&self, target: u64) {
        std::future::poll_fn(|cx| self.poll_reached(cx, target)).await
    }

    /// Waits until the previous frame has left: `yielded` bytes written (the total this
    /// connection's output has handed on) and less than [`NOTSENT_LOWAT`] of them still
    /// unsent in the kernel. `Err` once no byte has left the kernel for `stall`.
    pub async fn sent(&self, yielded: u64, stall: Duration) -> Result<(), Stalled> {
        // The user-space part: hyper's own write timeout covers a client that stalls here.
        self.reached(yielded).await;
        self.drained(stall).await
    }

    /// Waits until less than [`NOTSENT_LOWAT`] of what was written is still unsent in the
    /// kernel. `Err` once no byte has left the kernel for `stall`.
    pub async fn drained(&self, stall: Duration) -> Result<(), Stalled> {
        let mut last = None;
        let mut since = tokio::time::Instant::now();
        loop {
            let Some(kernel) = self.kernel_send_queue() else {
                return Ok(());
            };
            if kernel.unsent < NOTSENT_LOWAT {
                return Ok(());
            }
            if last != Some(kernel.unsent) {
                last = Some(kernel.unsent);
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= stall {
                return Err(Stalled(stall));
            }
            let rate = if kernel.delivery_rate > 0 {
                kernel.delivery_rate
            } else {
                FALLBACK_RATE
            };
            let excess = u64::from(kernel.unsent - NOTSENT_LOWAT) + 1;
            let wait = Duration::from_micros(excess.saturating_mul(1_000_000) / rate);
            tokio::time::sleep(wait.clamp(DRAIN_POLL_MIN, DRAIN_POLL_MAX)).await;
        }
    }

    /// The kernel's unsent bytes and delivery rate for this connection's socket; `None`
    /// when it is gone or the kernel says nothing (then nothing is waited for).
    fn kernel_send_queue(&self) -> Option<KernelSendQueue> {
        let fd = self.0.fd.load(Ordering::Acquire);
        (fd >= 0).then(|| kernel_send_queue(fd)).flatten()
    }

    fn add(&self, n: usize) {
        if n > 0 {
            self.0.written.fetch_add(n as u64, Ordering::Release);
            self.0.waker.wake();
        }
    }
}

/// What `TCP_INFO` tells of a socket's send side.
struct KernelSendQueue {
    /// Bytes written but not yet sent (`tcpi_notsent_bytes`).
    unsent: u32,
    /// The kernel's estimate of the connection's delivery rate, bytes per second; 0 when
    /// it has none.
    delivery_rate: u64,
}

fn kernel_send_queue(fd: RawFd) -> Option<KernelSendQueue> {
    use nix::libc;
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is that large; a
    // kernel with a shorter struct leaves the rest zero (then nothing looks unsent).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(KernelSendQueue {
        unsent: info.tcpi_notsent_bytes,
        delivery_rate: info.tcpi_delivery_rate,
    })
}

/// A connection's socket, counting what is written through it into a [`WriteProgress`].
pub struct Counted {
    inner: TcpStream,
    progress: WriteProgress,
}

impl Counted {
    pub fn new(inner: TcpStream, progress: WriteProgress) -> Counted {
        progress.0.fd.store(inner.as_raw_fd(), Ordering::Release);
        Counted { inner, progress }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Before the socket closes (fields drop after this).
        self.progress.0.fd.store(-1, Ordering::Release);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.progress.add(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.progress.add(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        // hyper writes a frame's chunks with one writev instead of copying them together.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn counts_writes_and_wakes_the_waiter() {
        let (server, _client) = pair().await;
        let progress = WriteProgress::default();
        let mut w = Counted::new(server, progress.clone());
        let waiter = tokio::spawn({
            let p = progress.clone();
            async move { p.reached(5000).await }
        });
        w.write_all(&[1; 3000]).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "3000 of 5000 bytes is not enough");
        w.write_all(&[2; 2000]).await.unwrap();
        waiter.await.unwrap();
        assert_eq!(progress.written(), 5000);
        drop(w);
        assert!(progress.kernel_send_queue().is_none(), "the socket is gone");
    }

    #[tokio::test]
    async fn waits_for_the_kernel_and_gives_up_on_a_client_that_stops_reading() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = pair().await;
        limit_unsent(&server);
        let progress = WriteProgress::default();
        let mut w = Counted::new(server, progress.clone());
        // Fill the client's receive window and the server's queue: the client reads
        // nothing, so the writes stop once the kernel holds the low-water mark.
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0u64;
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), w.write(&chunk)).await
        {
            written += n as u64;
        }
        let unsent = progress.kernel_send_queue().unwrap().unsent;
        assert!(unsent >= NOTSENT_LOWAT, "{unsent} bytes unsent");
        let stalled = progress.sent(written, Duration::from_millis(300)).await;
        assert!(
            stalled.is_err(),
            "nothing left the kernel, yet it counted as sent"
        );
        // Once the client reads everything, the queue drains and the wait ends.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while got < written {
                got += client.read(&mut buf).await.unwrap() as u64;
            }
        });
        progress
            .sent(written, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(progress.kernel_send_queue().unwrap().unsent < NOTSENT_LOWAT);
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn a_socket_takes_the_low_water_mark() {
        let (server, _client) = pair().await;
        limit_unsent(&server);
        let set = socket2::SockRef::from(&server).tcp_notsent_lowat().unwrap();
        assert_eq!(set, NOTSENT_LOWAT);
    }
}
