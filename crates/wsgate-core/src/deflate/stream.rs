//! The inbound adapter as a socket wrapper: reads go through a [`Deframer`] once the
//! extension is negotiated, writes pass through untouched (outbound compression happens
//! per message, above tungstenite).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Deframer, InflateError};

/// How much one read from the socket takes (on the stack, not per connection).
const READ_CHUNK: usize = 8 * 1024;

/// A socket whose compressed inbound messages arrive inflated. Without a [`Deframer`]
/// it is a plain pass-through.
#[derive(Debug)]
pub struct InflateStream<S> {
    inner: S,
    /// Boxed: most sessions never negotiate the extension, and every one holds this.
    deframer: Option<Box<Deframer>>,
    /// Bytes for the reader not yet taken; empty (unallocated) between reads.
    pending: Vec<u8>,
    taken: usize,
    failed: Option<InflateError>,
}

impl<S> InflateStream<S> {
    /// Wraps `inner`; `deframer` is `None` when the extension was not negotiated.
    pub fn new(inner: S, deframer: Option<Deframer>) -> Self {
        Self {
            inner,
            deframer: deframer.map(Box::new),
            pending: Vec::new(),
            taken: 0,
            failed: None,
        }
    }

    /// The wrapped socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Starts (or stops) inflating, for a client that learns from the handshake's
    /// response whether the extension was negotiated. Bytes already read past the
    /// response head are not seen by the new deframer.
    pub fn set_deframer(&mut self, deframer: Option<Deframer>) {
        self.deframer = deframer.map(Box::new);
    }
}

/// The adapter's error as the I/O error tungstenite passes on (`InvalidData`, with the
/// [`InflateError`] inside for the session to map to a close code).
pub fn io_error(e: InflateError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl InflateError {
    /// The adapter's error inside an I/O error, if that is what it is.
    pub fn from_io(e: &io::Error) -> Option<InflateError> {
        e.get_ref()?.downcast_ref::<InflateError>().copied()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for InflateStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(deframer) = &mut this.deframer else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if this.taken < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.taken);
                buf.put_slice(&this.pending[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.pending.len() {
                    this.pending = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failed {
                return Poll::Ready(Err(io_error(e)));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream, as it is.
                return Poll::Ready(Ok(()));
            }
            // What came before an error is still handed on; the error follows.
            if let Err(e) = deframer.process(read.filled(), &mut this.pending) {
                this.failed = Some(e);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for InflateStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
