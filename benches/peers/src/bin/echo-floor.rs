//! The floor of echo: about the least a WebSocket echo server can do, on one
//! thread, for each readable event.
//!
//! Exists only to be benchmarked against emitws (benches/compare.sh): the
//! rate it reaches is what the kernel leaves for ping-pong echo on this
//! machine, so a real server is read as a ratio to it. Usage:
//!     echo-floor [ADDR]        (default 127.0.0.1:9005)
//!
//! One mio event loop. Per readable event: one read (a second only when the
//! first filled the buffer), every complete frame appended to one output
//! buffer as the same frame unmasked, one write (what it does not take waits
//! for a writable event). Nothing of RFC 6455 is
//! checked beyond the frame lengths: text is not UTF-8 checked, fragments
//! are echoed frame by frame, a ping comes back as a pong, a close as the
//! same close, after which the connection ends. The handshake reads just the
//! `Sec-WebSocket-Key` header of a request that ends within 8 KiB. Nothing
//! is logged per connection. SIGINT/SIGTERM end the process (exit status 0).

use std::io::{self, Read, Write};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

#[path = "../signals.rs"]
mod signals;

const DEFAULT_ADDR: &str = "127.0.0.1:9005";
const LISTENER: Token = Token(usize::MAX);
/// A connection's read buffer to begin with; it grows for a larger frame.
const READ_BUFFER: usize = 64 * 1024;
/// Largest frame payload (the other peers' message limit).
const MAX_PAYLOAD: u64 = 64 << 20;
/// Longest handshake request.
const MAX_REQUEST: usize = 8 * 1024;

const OPCODE: u8 = 0x0f;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;
const MASKED: u8 = 0x80;

fn main() -> io::Result<()> {
    signals::exit_on_sigint_sigterm();
    let addr = std::env::args().nth(1).unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let addr = addr.parse().expect("ADDR: an IP address and a port");
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("echo-floor listening on {}", listener.local_addr()?);

    // A connection's token is its index here; `free` lists the empty ones.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns, &mut free);
                continue;
            }
            let index = event.token().0;
            let Some(conn) = conns[index].as_mut() else {
                continue;
            };
            // Errors (peer vanished, a frame too large, ...) just end the connection.
            if !matches!(conn.on_event(event, poll.registry()), Ok(true)) {
                let _ = poll.registry().deregister(&mut conn.stream);
                conns[index] = None;
                free.push(index);
            }
        }
    }
}

/// Accepts every pending connection (the listener is edge-triggered).
fn accept_all(listener: &TcpListener, poll: &Poll, conns: &mut Vec<Option<Conn>>, free: &mut Vec<usize>) {
    loop {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // e.g. EMFILE: the backlog waits for the next connection's event.
                eprintln!("accept error: {e}");
                return;
            }
        };
        let index = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        let registered = stream
            .set_nodelay(true)
            .and_then(|()| poll.registry().register(&mut stream, Token(index), Interest::READABLE));
        match registered {
            Ok(()) => conns[index] = Some(Conn::new(stream, Token(index))),
            Err(_) => free.push(index),
        }
    }
}

struct Conn {
    stream: TcpStream,
    token: Token,
    /// Bytes read and not answered yet are `input[..filled]`.
    input: Vec<u8>,
    filled: usize,
    /// Bytes still to write are `output[written..]`.
    output: Vec<u8>,
    written: usize,
    upgraded: bool,
    /// A close was answered: the connection ends once `output` is written.
    closing: bool,
    /// Registered for writable events too, because a write was partial.
    awaiting_writable: bool,
}

impl Conn {
    fn new(stream: TcpStream, token: Token) -> Self {
        Conn {
            stream,
            token,
            input: vec![0; READ_BUFFER],
            filled: 0,
            output: Vec::with_capacity(READ_BUFFER),
            written: 0,
            upgraded: false,
            closing: false,
            awaiting_writable: false,
        }
    }

    /// Reads and answers what arrived, then writes. Ok(false): the connection is over.
    fn on_event(&mut self, event: &Event, registry: &Registry) -> io::Result<bool> {
        if event.is_readable() && !self.closing && !self.read_and_answer()? {
            return Ok(false);
        }
        self.write(registry)
    }

    /// Ok(false): the peer closed its side.
    fn read_and_answer(&mut self) -> io::Result<bool> {
        loop {
            let space = self.input.len() - self.filled;
            let read = match self.stream.read(&mut self.input[self.filled..]) {
                Ok(0) => return Ok(false),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.filled += read;
            if self.upgraded {
                self.answer_frames()?;
            } else {
                self.answer_handshake()?;
            }
            // A read that did not fill the buffer emptied the socket: more
            // data brings another event (mio is edge-triggered).
            // (Answering left room: a partial frame always fits, see answer_frames.)
            if read < space || self.closing {
                return Ok(true);
            }
        }
    }

    fn answer_handshake(&mut self) -> io::Result<()> {
        let request = &self.input[..self.filled];
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.filled > MAX_REQUEST {
                return Err(invalid("handshake request too long"));
            }
            return Ok(());
        };
        let key = request[..end]
            .split(|&b| b == b'\n')
            .find_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let (name, value) = line.split_at(colon);
                name.trim_ascii().eq_ignore_ascii_case(b"sec-websocket-key").then(|| value[1..].trim_ascii())
            })
            .ok_or_else(|| invalid("no Sec-WebSocket-Key header"))?;
        let accept = derive_accept_key(key);
        write!(
            self.output,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )?;
        self.upgraded = true;
        self.consume(end + 4);
        self.answer_frames()
    }

    /// Appends the answer to every complete frame in `input` to `output`.
    fn answer_frames(&mut self) -> io::Result<()> {
        let mut at = 0;
        while !self.closing {
            let Some((header, len)) = frame_size(&self.input[at..self.filled])? else {
                break;
            };
            if at + header + len > self.filled {
                // Make sure the whole frame fits once the answered ones are gone.
                if header + len > self.input.len() {
                    self.input.resize(header + len, 0);
                }
                break;
            }
            let frame = &self.input[at..at + header + len];
            let opcode = match frame[0] & OPCODE {
                PING => PONG,
                CLOSE => {
                    self.closing = true;
                    CLOSE
                }
                other => other,
            };
            // The same header, unmasked, without the masking key.
            self.output.push(frame[0] & !OPCODE | opcode);
            self.output.push(frame[1] & !MASKED);
            self.output.extend_from_slice(&frame[2..header - 4]);
            let key = frame[header - 4..header].try_into().expect("the masking key is 4 bytes");
            unmask_into(&mut self.output, &frame[header..], key);
            at += header + len;
        }
        self.consume(at);
        Ok(())
    }

    /// Drops the first `n` bytes of `input`.
    fn consume(&mut self, n: usize) {
        self.input.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// One write of what is pending; the rest, if any, goes on the next
    /// writable event, asked for only then (writable events on every ACK
    /// would wake the loop for nothing). Ok(false): the close is sent, the
    /// connection is over.
    fn write(&mut self, registry: &Registry) -> io::Result<bool> {
        let pending = &self.output[self.written..];
        if !pending.is_empty() {
            self.written += loop {
                match self.stream.write(pending) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                    Err(e) => return Err(e),
                }
            };
        }
        let drained = self.written == self.output.len();
        if drained == self.awaiting_writable {
            self.awaiting_writable = !drained;
            let interest = if drained { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
            registry.reregister(&mut self.stream, self.token, interest)?;
        }
        if !drained {
            return Ok(true);
        }
        self.output.clear();
        self.written = 0;
        Ok(!self.closing)
    }
}

/// The header and payload length of the client frame `buf` starts with,
/// once its header is complete.
fn frame_size(buf: &[u8]) -> io::Result<Option<(usize, usize)>> {
    let Some(&[_, second]) = buf.get(..2) else {
        return Ok(None);
    };
    if second & MASKED == 0 {
        return Err(invalid("an unmasked client frame"));
    }
    let (len, length_bytes) = match second & !MASKED {
        126 => match buf.get(2..4) {
            Some(len) => (u64::from(u16::from_be_bytes([len[0], len[1]])), 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(len) => (u64::from_be_bytes(len.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        len => (u64::from(len), 0),
    };
    if len > MAX_PAYLOAD {
        return Err(invalid("a frame larger than 64 MiB"));
    }
    let header = 2 + length_bytes + 4;
    Ok((buf.len() >= header).then_some((header, len as usize)))
}

/// Appends `payload` XORed with the masking `key` to `out`, eight bytes at a time.
fn unmask_into(out: &mut Vec<u8>, payload: &[u8], key: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(payload);
    let [a, b, c, d] = key;
    let key8 = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = out[start..].chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ key8;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // The rest starts at a multiple of 8, so at key[0].
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}
