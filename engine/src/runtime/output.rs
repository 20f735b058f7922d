//! Bounded capture of a guest's stdout and stderr.

use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex, PoisonError};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// A stdout/stderr sink that keeps the first `capacity` bytes and silently
/// drops the rest.
///
/// wasmtime-wasi's `MemoryOutputPipe` traps the guest when it is full,
/// which would turn a talkative but correct tool into a failed call; here
/// the guest always sees a successful write and the host sees a truncation
/// flag.
#[derive(Clone)]
pub(crate) struct BoundedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    bytes: BytesMut,
    capacity: usize,
    truncated: bool,
}

impl BoundedOutput {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                capacity,
                ..Captured::default()
            })),
        }
    }

    fn append(&self, data: &[u8]) {
        let mut captured = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let room = captured.capacity.saturating_sub(captured.bytes.len());
        if data.len() > room {
            captured.truncated = true;
        }
        let keep = data.len().min(room);
        captured.bytes.extend_from_slice(&data[..keep]);
    }

    /// What the guest wrote (lossy UTF-8) and whether some was dropped.
    pub(crate) fn contents(&self) -> (String, bool) {
        let captured = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (
            String::from_utf8_lossy(&captured.bytes).into_owned(),
            captured.truncated,
        )
    }
}

/// Largest single write the guest is offered; any size would do since
/// writes never block.
const WRITE_PERMIT: usize = 64 * 1024;

#[async_trait::async_trait]
impl OutputStream for BoundedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for BoundedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for BoundedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for BoundedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_head_and_flags_the_rest() {
        let out = BoundedOutput::new(5);
        out.append(b"abc");
        out.append(b"defg");
        assert_eq!(out.contents(), ("abcde".to_owned(), true));
    }
}
