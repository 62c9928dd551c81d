//! A connection's outbound bytes: frames coalesced into one buffer (small
//! broadcast frames copied in too), large payloads and large broadcast
//! frames held as segments of their own; one buffer is written with `send`,
//! several with one `writev`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use crate::proto::connection::Output;
use crate::proto::{apply_mask, FrameHeader, OpCode, MAX_HEADER_LEN};

/// Payloads at least this long get their own segment instead of being copied
/// onto the end of the coalescing buffer.
const OWN_SEGMENT: usize = 64 << 10;
/// Shared frames shorter than this are copied into the queue's own buffer
/// rather than held by reference (see `push_shared`).
const COPY_SHARED_BELOW: usize = 1024;
// `push_shared` appends a copied frame to any owned tail buffer.
const _: () = assert!(COPY_SHARED_BELOW <= OWN_SEGMENT);
/// The largest buffer a pooled queue keeps; bigger ones are freed.
const POOLED_CAPACITY: usize = 64 << 10;
/// The most iovecs handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// The most write queues a worker keeps for reuse: enough for every member
/// of a large room written in one fan-out turn (with 256, a turn writing
/// 1,000 members allocated and freed 744 queues and their buffers, 40% of
/// the worker's instructions per delivery).
const POOL_QUEUES: usize = 4096;
/// The most buffer bytes the pooled queues keep between them, so a burst of
/// large messages does not leave a large pool behind.
const POOL_BYTES: usize = 8 << 20;

#[derive(Debug)]
enum Segment {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(bytes) => bytes,
            Segment::Shared(bytes) => bytes,
        }
    }
}

/// Bytes waiting to be written to one socket.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    segments: VecDeque<Segment>,
    /// Bytes of the front segment already written.
    written: usize,
    /// Bytes not yet written.
    len: usize,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends bytes written by `write` into the queue's tail buffer.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let tail = self.tail(0);
        let before = tail.len();
        write(tail);
        self.len += tail.len() - before;
    }

    /// Appends a frame, masked with `mask` if given (the client end masks).
    pub fn push_frame_masked(&mut self, opcode: OpCode, rsv: u8, mask: Option<[u8; 4]>, payload: &[u8]) {
        let header = FrameHeader { fin: true, rsv, opcode, mask, payload_len: payload.len() as u64 };
        let mut head = [0; MAX_HEADER_LEN];
        let head_len = header.encode(&mut head);
        let tail = self.tail(head_len + payload.len());
        tail.extend_from_slice(&head[..head_len]);
        let start = tail.len();
        tail.extend_from_slice(payload);
        if let Some(mask) = mask {
            apply_mask(&mut tail[start..], mask, 0);
        }
        self.len += head_len + payload.len();
    }

    /// Appends a frame encoded once and shared with other connections: a
    /// small one is copied onto the tail buffer, so that a fan-out turn
    /// writes each member one contiguous buffer with one `send` (iovecs of
    /// small frames cost the kernel more per byte than the copy costs here,
    /// and a reference costs an atomic count up and down); a large one is
    /// held by reference.
    pub fn push_shared(&mut self, frame: &Arc<[u8]>) {
        if frame.len() < COPY_SHARED_BELOW {
            match self.segments.back_mut() {
                // A small frame always fits the last owned buffer (`tail`'s
                // test, spared here: one lookup of the last segment, not two).
                Some(Segment::Owned(buf)) => buf.extend_from_slice(frame),
                _ => self.tail(frame.len()).extend_from_slice(frame),
            }
        } else {
            self.segments.push_back(Segment::Shared(Arc::clone(frame)));
        }
        self.len += frame.len();
    }

    /// The owned buffer to append `extra` bytes to: the last one unless the
    /// payload is large enough to deserve its own segment.
    fn tail(&mut self, extra: usize) -> &mut Vec<u8> {
        let reuse = match self.segments.back() {
            Some(Segment::Owned(buf)) => extra < OWN_SEGMENT || buf.is_empty(),
            _ => false,
        };
        if !reuse {
            self.segments.push_back(Segment::Owned(Vec::with_capacity(extra.max(256))));
        }
        match self.segments.back_mut() {
            Some(Segment::Owned(buf)) => buf,
            _ => unreachable!("an owned segment was just ensured"),
        }
    }

    /// Drops every segment not yet started, keeping a partly written one so
    /// the stream stays frame-aligned. Used before a forced close.
    pub fn truncate_unstarted(&mut self) {
        let keep = usize::from(self.written > 0);
        while self.segments.len() > keep {
            let segment = self.segments.pop_back().expect("len checked");
            self.len -= segment.bytes().len();
        }
        if keep == 0 {
            self.len = 0;
        }
    }

    /// Writes as much as the socket takes. Returns `Ok(true)` once empty.
    pub fn flush(&mut self, socket: &mut impl Write) -> io::Result<bool> {
        while self.len > 0 {
            let result = if let Some(bytes) = self.contiguous() {
                // One buffer, the common case: a plain `send`, and no iovec
                // array to fill (176 instructions per flush when it was).
                socket.write(bytes)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, segment) in self.segments.iter().take(MAX_IOVECS).enumerate() {
                    let bytes = segment.bytes();
                    slices[i] = IoSlice::new(if i == 0 { &bytes[self.written..] } else { bytes });
                    count += 1;
                }
                socket.write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The bytes not yet written, when they are one buffer (a queue of
    /// several is written with `writev`).
    pub fn contiguous(&self) -> Option<&[u8]> {
        match self.segments.len() {
            1 if self.len > 0 => Some(&self.segments[0].bytes()[self.written..]),
            _ => None,
        }
    }

    /// Marks the first `n` queued bytes written.
    pub fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.segments.front().expect("written bytes were queued").bytes().len();
            let left = front - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            let done = self.segments.pop_front().expect("checked above");
            if self.segments.is_empty() {
                self.keep_for_reuse(done);
            }
        }
    }

    /// Keeps an emptied buffer of modest size as the queue's only segment, so
    /// that steady traffic reuses one buffer instead of allocating per write.
    fn keep_for_reuse(&mut self, segment: Segment) {
        if let Segment::Owned(mut buf) = segment {
            if buf.capacity() <= POOLED_CAPACITY {
                buf.clear();
                self.segments.push_back(Segment::Owned(buf));
            }
        }
    }

    /// The bytes an emptied queue keeps allocated: its one buffer's.
    #[inline]
    fn kept_capacity(&self) -> usize {
        match self.segments.front() {
            Some(Segment::Owned(buf)) => buf.capacity(),
            _ => 0,
        }
    }

    /// Empties the queue for reuse, keeping one modest buffer's capacity.
    pub fn reset(&mut self) {
        self.written = 0;
        self.len = 0;
        let first = self.segments.pop_front();
        self.segments.clear();
        if let Some(segment) = first {
            self.keep_for_reuse(segment);
        }
    }
}

/// A worker's emptied write queues, kept for the connections that write
/// next so that idle connections hold none and busy ones allocate none.
/// Boxed because connections hold them boxed (8 bytes when idle), and moving
/// a box between pool and connection copies nothing.
#[derive(Debug, Default)]
pub(crate) struct QueuePool {
    #[allow(clippy::vec_box)]
    queues: Vec<Box<OutQueue>>,
    /// The buffer capacity the pooled queues keep, in bytes.
    bytes: usize,
}

impl QueuePool {
    /// A queue for a connection that writes: a pooled one if any.
    #[inline]
    pub fn take(&mut self) -> Box<OutQueue> {
        match self.queues.pop() {
            Some(queue) => {
                self.bytes -= queue.kept_capacity();
                queue
            }
            None => Box::default(),
        }
    }

    /// Takes back an emptied queue, unless the pool is full.
    pub fn give(&mut self, mut queue: Box<OutQueue>) {
        if queue.len > 0 || queue.segments.len() > 1 {
            // A flushed queue is empty already (`consume` keeps its buffer);
            // one dropped before it was written is not.
            queue.reset();
        }
        let bytes = queue.kept_capacity();
        if self.queues.len() < POOL_QUEUES && self.bytes + bytes <= POOL_BYTES {
            self.bytes += bytes;
            self.queues.push(queue);
        }
    }

    /// How many queues it keeps, and their buffers' bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.queues.len(), self.bytes)
    }
}

/// The protocol machine's frames (pongs, closes, keepalive pings) go
/// straight into the queue, unmasked: the server end's. A connection at the
/// client end needs a wrapper that masks, as `Masked` does for a byte buffer.
impl Output for OutQueue {
    #[inline]
    fn queued(&self) -> usize {
        self.len
    }

    #[inline]
    fn push_frame(&mut self, opcode: OpCode, rsv: u8, payload: &[u8]) {
        self.push_frame_masked(opcode, rsv, None, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that accepts at most `limit` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_exactly_where_they_stopped() {
        let mut queue = OutQueue::default();
        let shared: Arc<[u8]> = Arc::from(&b"shared-frame"[..]);
        queue.push_with(|out| out.extend_from_slice(b"head "));
        queue.push_shared(&shared);
        queue.push_frame_masked(OpCode::Text, 0, None, &[b'x'; 70_000]);
        queue.push_with(|out| out.extend_from_slice(b" tail"));
        let expected_len = queue.len();
        let mut socket = Trickle { out: Vec::new(), limit: 7, calls_left: 3 };
        assert!(!queue.flush(&mut socket).unwrap());
        // The shared frame joined the first buffer (17 bytes), written 7 + 7 + 3.
        assert_eq!(queue.len(), expected_len - 17);
        socket.limit = usize::MAX;
        socket.calls_left = usize::MAX;
        assert!(queue.flush(&mut socket).unwrap());
        assert!(socket.out.starts_with(b"head shared-frame\x81\x7f"));
        assert!(socket.out.ends_with(b"x tail"));
        assert_eq!(socket.out.len(), expected_len);
    }

    #[test]
    fn truncation_keeps_the_frame_in_progress() {
        let mut queue = OutQueue::default();
        let big = vec![b'b'; COPY_SHARED_BELOW];
        queue.push_shared(&Arc::from(&big[..]));
        queue.push_with(|out| out.extend_from_slice(b"later"));
        let mut socket = Trickle { out: Vec::new(), limit: 4, calls_left: 1 };
        queue.flush(&mut socket).unwrap();
        queue.truncate_unstarted();
        assert_eq!(queue.len(), big.len() - 4);
        socket.calls_left = 10;
        socket.limit = 1 << 20;
        assert!(queue.flush(&mut socket).unwrap());
        assert_eq!(socket.out, big);
    }

    #[test]
    fn small_shared_frames_join_the_buffer_and_large_ones_are_referenced() {
        let mut queue = OutQueue::default();
        let small: Arc<[u8]> = Arc::from(&b"small"[..]);
        let large: Arc<[u8]> = Arc::from(vec![b'L'; COPY_SHARED_BELOW]);
        queue.push_shared(&small);
        queue.push_shared(&small);
        assert_eq!(queue.segments.len(), 1, "copied into one buffer");
        assert_eq!(Arc::strong_count(&small), 1, "no reference kept");
        queue.push_shared(&large);
        assert_eq!(Arc::strong_count(&large), 2, "held by reference");
        queue.push_shared(&small);
        assert_eq!(queue.segments.len(), 3);
        let mut socket = Trickle { out: Vec::new(), limit: usize::MAX, calls_left: usize::MAX };
        assert!(queue.flush(&mut socket).unwrap());
        let expected = [&b"smallsmall"[..], &large, b"small"].concat();
        assert_eq!(socket.out, expected);
        assert_eq!(Arc::strong_count(&large), 1, "released once written");
    }

    #[test]
    fn the_pool_keeps_at_most_its_byte_budget_and_counts_what_leaves() {
        let mut pool = QueuePool::default();
        let flushed = |payload: usize| {
            let mut queue = Box::<OutQueue>::default();
            queue.push_frame_masked(OpCode::Binary, 0, None, &vec![0; payload]);
            let mut socket = Trickle { out: Vec::new(), limit: usize::MAX, calls_left: usize::MAX };
            assert!(queue.flush(&mut socket).unwrap());
            queue
        };
        for _ in 0..POOL_BYTES / (32 << 10) + 10 {
            pool.give(flushed(32 << 10));
        }
        let (queues, bytes) = pool.size();
        assert!(bytes <= POOL_BYTES && bytes > POOL_BYTES - (64 << 10), "{bytes}");
        let taken = pool.take();
        assert_eq!(pool.size(), (queues - 1, bytes - taken.kept_capacity()));
        assert_eq!(taken.len(), 0);
        // A queue given back before it was written is emptied first.
        let mut unwritten = Box::<OutQueue>::default();
        unwritten.push_shared(&Arc::from(vec![1; COPY_SHARED_BELOW]));
        unwritten.push_with(|out| out.extend_from_slice(b"more"));
        let mut pool = QueuePool::default();
        pool.give(unwritten);
        assert_eq!(pool.take().len(), 0);
    }
}
