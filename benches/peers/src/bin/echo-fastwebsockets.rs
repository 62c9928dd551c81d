//! Reference echo server: fastwebsockets (server upgrade via hyper, the
//! crate's `upgrade` feature).
//!
//! Exists only to be benchmarked against emitws in the same run. Usage:
//!     echo-fastwebsockets [ADDR]     (default 127.0.0.1:9002)
//!
//! Set up as fastwebsockets' own README / `examples/echo_server.rs` recommend:
//! auto_close + auto_pong (the library answers pings and close frames),
//! writev for large payloads, a `FragmentCollector` so fragmented messages are
//! reassembled (and text is UTF-8 validated) and echoed as one message with
//! the original opcode, the received frame written straight back (no copy),
//! and connection tasks run `unconstrained`. Nothing is logged per message or
//! per connection. SIGINT/SIGTERM end the process (exit status 0).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use fastwebsockets::{upgrade, FragmentCollector, OpCode, Role, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[path = "../serve.rs"]
mod serve;

const DEFAULT_ADDR: &str = "127.0.0.1:9002";
/// 64 MiB (also fastwebsockets' default; set explicitly so the limit is
/// visible and equal to echo-tungstenite's).
const MAX_SIZE: usize = 64 << 20;

fn main() {
    serve::serve("echo-fastwebsockets", DEFAULT_ADDR, |stream| {
        if stream.set_nodelay(true).is_err() {
            return;
        }
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(server_upgrade))
                .with_upgrades();
            // Non-upgrade requests and broken handshakes just end here.
            let _ = conn.await;
        });
    });
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(tokio::task::unconstrained(async move {
        // Errors (peer vanished, protocol violation, ...) just end the
        // connection; nothing is logged on this path.
        let _ = run(fut).await;
    }));
    Ok(response)
}

async fn run(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    // hyper hands the upgraded connection back as a type-erased
    // `Upgraded` (a boxed trait object behind a rewind buffer). Recover the
    // concrete TcpStream so the hot path does static dispatch, exactly like
    // `WebSocket::after_handshake(tcp_stream, ..)` in the fastwebsockets
    // README. If hyper already buffered bytes past the HTTP request (a client
    // that pipelined its first frame), keep them in front of the stream.
    let upgraded = ws.into_inner().into_inner();
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner();
            if parts.read_buf.is_empty() {
                echo(WebSocket::after_handshake(tcp, Role::Server)).await
            } else {
                let io = Prefixed {
                    buf: parts.read_buf,
                    io: tcp,
                };
                echo(WebSocket::after_handshake(io, Role::Server)).await
            }
        }
        // Not reachable with this server (the IO is always TokioIo<TcpStream>),
        // but stay correct if it ever is.
        Err(upgraded) => {
            echo(WebSocket::after_handshake(
                TokioIo::new(upgraded),
                Role::Server,
            ))
            .await
        }
    }
}

async fn echo<S>(mut ws: WebSocket<S>) -> Result<(), WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.set_writev(true);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(MAX_SIZE);
    let mut ws = FragmentCollector::new(ws);

    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            // auto_close already sent the close reply.
            OpCode::Close => break,
            // Whole message (fin set), same opcode, payload written back as is.
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            // Ping (answered by auto_pong) / Pong: nothing to do.
            _ => {}
        }
    }
    Ok(())
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    buf: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.remaining());
            let chunk = self.buf.split_to(n);
            out.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, b)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
