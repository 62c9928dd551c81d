//! A loop turn's socket writes handed to the kernel together: one
//! `io_uring_enter` for every plain-TCP connection the turn wrote to, instead
//! of one `send` each (feature `io-uring`, Linux; chosen by
//! [`Settings::io_uring_sends`](crate::runtime::Settings::io_uring_sends)).
//!
//! Each send carries `MSG_DONTWAIT`, so the kernel tries it at once and
//! completes it with `EAGAIN` rather than parking it until the socket drains:
//! by the time [`SendRing::submit`] returns, every send has completed and no
//! buffer is still in the kernel's hands.

// The kernel reads each buffer after `push` returns: the caller promises it
// stays put until `submit`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// Sends submitted at once; a turn with more connections to write submits in
/// several batches.
const BATCH: usize = 1024;

/// The result of a send that never reached the kernel (the ring failed first).
pub(crate) const NOT_SENT: i32 = i32::MIN;

/// The ring, and the sends of the batch being built.
pub(crate) struct SendRing {
    ring: IoUring,
    /// Per queued send, by its position: the connection's key, and the
    /// send's result once complete (bytes written, or a negated errno).
    sends: Vec<(usize, i32)>,
}

impl SendRing {
    /// A ring of `BATCH` entries.
    ///
    /// # Errors
    /// The kernel's, when it refuses io_uring (too old, or forbidden by a
    /// seccomp policy or `kernel.io_uring_disabled`).
    pub fn new() -> io::Result<SendRing> {
        Ok(SendRing { ring: IoUring::new(BATCH as u32)?, sends: Vec::with_capacity(BATCH) })
    }

    /// Whether the batch holds as many sends as the ring takes.
    pub fn is_full(&self) -> bool {
        self.sends.len() == BATCH
    }

    /// Queues a send of `bytes` on `fd` for the connection `key`.
    ///
    /// # Safety
    /// `bytes` and `fd` must stay valid, and `bytes` unchanged, until
    /// [`submit`](Self::submit) returns.
    pub unsafe fn push(&mut self, key: usize, fd: RawFd, bytes: &[u8]) {
        // A send of more than 4 GiB writes part of it, as a short write would.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let send = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), len)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(self.sends.len() as u64);
        // SAFETY: the caller keeps the buffer and the socket alive until the
        // send completes, which `submit` waits for.
        let pushed = unsafe { self.ring.submission().push(&send) };
        pushed.expect("the caller submits before the batch exceeds the ring's BATCH entries");
        self.sends.push((key, NOT_SENT));
    }

    /// Submits the batch and waits for every send in it to complete; then
    /// [`sends`](Self::sends) has each one's result.
    ///
    /// # Errors
    /// `io_uring_enter`'s: the ring is unusable. The sends it did not take
    /// keep the result [`NOT_SENT`]; those it took have all completed (they
    /// never wait for the socket) and have their results.
    pub fn submit(&mut self) -> io::Result<()> {
        let mut completed = 0;
        while completed < self.sends.len() {
            let entered = self.ring.submit_and_wait(self.sends.len() - completed);
            for completion in self.ring.completion() {
                self.sends[completion.user_data() as usize].1 = completion.result();
                completed += 1;
            }
            match entered {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The sends of the batch: each connection's key, with the send's result
    /// once submitted (bytes written, a negated errno, or [`NOT_SENT`]), in
    /// the order they were pushed.
    pub fn sends(&self) -> &[(usize, i32)] {
        &self.sends
    }

    /// Forgets the last batch.
    pub fn clear(&mut self) {
        self.sends.clear();
    }
}
