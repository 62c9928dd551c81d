//! An open connection's input: frames decoded and dispatched to the handler,
//! protocol errors failed, and `on_close` reported once.

use super::*;

/// Decodes frames from `input` and dispatches them.
pub(super) fn frames<H: Handler>(
    slot: &mut Slot<H::Data>,
    key: usize,
    handler: &mut H,
    ctx: &mut WorkerState,
    input: &mut [u8],
) {
    let Slot { decoder, conn } = slot;
    let limits = conn.limits(&ctx.settings);
    let mut pos = 0;
    while pos < input.len() && matches!(conn.phase, Phase::Open | Phase::Closing) {
        let decoded = match decoder.decode(&mut input[pos..], &limits) {
            Ok(decoded) => decoded,
            Err(e) => return fail_on(e, handler, key, conn, ctx),
        };
        pos += decoded.consumed;
        match decoded.event {
            None => {}
            // After our close frame, data messages are no longer delivered.
            Some(Event::Message(message)) if conn.phase == Phase::Open => {
                handler.on_message(&mut Conn { key, conn, ctx }, message);
                settle(handler, key, conn, ctx);
            }
            Some(Event::Compressed { text, payload }) if conn.phase == Phase::Open => {
                let state = conn.deflate().expect("RSV1 is only allowed once permessage-deflate is agreed");
                // Taken out of the context for the callback, which borrows the context too.
                let mut deflater = std::mem::take(&mut ctx.deflater);
                let inflated = deflater.decompress(state, text, payload, limits.max_message_size);
                let result = inflated.map(|message| handler.on_message(&mut Conn { key, conn, ctx }, message));
                ctx.deflater = deflater;
                if let Err(e) = result {
                    return fail_on(e, handler, key, conn, ctx);
                }
                settle(handler, key, conn, ctx);
            }
            Some(Event::Ping(payload)) => {
                // Pongs count against the send budget like any frame: a ping
                // flood from a peer that does not read cannot grow the queue.
                let fits = conn.queued() + payload.len() + 2 <= ctx.settings.max_buffered;
                if conn.phase == Phase::Open && fits {
                    ctx.push_frame(key, conn, OpCode::Pong, 0, payload);
                }
            }
            Some(Event::Pong(payload)) if conn.phase == Phase::Open => {
                handler.on_pong(&mut Conn { key, conn, ctx }, payload);
                settle(handler, key, conn, ctx);
            }
            Some(Event::Pong(_) | Event::Message(_) | Event::Compressed { .. }) => {}
            Some(Event::Close(code, reason)) => {
                if let Some(reply) = conn.phase.close_handshake().and_then(|mut close| close.receive(code)) {
                    ctx.push_frame(key, conn, OpCode::Close, 0, reply.payload());
                }
                ctx.finish(key, conn);
                report_close(handler, key, conn, ctx, &CloseReason::Peer { code, reason: reason.to_string() });
                return;
            }
        }
    }
}

/// Fails the connection for a protocol error of the peer's, and tells the handler.
pub(super) fn fail_on<H: Handler>(
    error: ProtocolError,
    handler: &mut H,
    key: usize,
    conn: &mut Connection<H::Data>,
    ctx: &mut WorkerState,
) {
    ctx.fail(key, conn, error.close_code(), &error.to_string());
    report_close(handler, key, conn, ctx, &CloseReason::Protocol(error));
}

/// Calls `on_close` once for an opened connection.
pub(super) fn report_close<H: Handler>(
    handler: &mut H,
    key: usize,
    conn: &mut Connection<H::Data>,
    ctx: &mut WorkerState,
    reason: &CloseReason,
) {
    if conn.has(flag::OPENED) && !conn.has(flag::NOTIFIED) {
        conn.flags |= flag::NOTIFIED;
        handler.on_close(&mut Conn { key, conn, ctx }, reason);
    }
}

/// After a callback: report a close the callback caused (a send over budget).
pub(super) fn settle<H: Handler>(handler: &mut H, key: usize, conn: &mut Connection<H::Data>, ctx: &mut WorkerState) {
    if conn.has(flag::CLOSE_PENDING) {
        conn.flags &= !flag::CLOSE_PENDING;
        report_close(handler, key, conn, ctx, &CloseReason::SendBufferFull);
    }
}
