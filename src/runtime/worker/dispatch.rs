//! An open connection's input: the protocol machine decodes it (answering
//! pings, echoing closes, failing protocol errors), and what it hands out
//! goes to the handler; `on_close` is reported once.

use super::*;

/// Decodes frames from `input` and dispatches them.
pub(super) fn frames<H: Handler>(
    slot: &mut WorkerConn<H::Data>,
    key: usize,
    handler: &mut H,
    ctx: &mut WorkerState,
    input: &mut [u8],
) {
    let WorkerConn { machine, conn } = slot;
    // Held rather than borrowed from `ctx`, which the callbacks borrow.
    let config = ctx.config_of(conn);
    let now = ctx.now();
    let mut pos = 0;
    while pos < input.len() && machine.can_read() {
        let Step { used, received, ended: end, control } =
            machine.decode(&mut input[pos..], now, &config, &mut Outbox { key, conn, ctx });
        pos += used;
        if let Some(reason) = end {
            return ended(handler, key, conn, control, ctx, &reason);
        }
        match received {
            None => continue,
            Some(Received::Message(message)) => handler.on_message(&mut Conn { key, conn, control, ctx }, message),
            Some(Received::Compressed { text, payload }) => {
                let state = conn.deflate().expect("RSV1 is only allowed once permessage-deflate is agreed");
                // Taken out of the context for the callback, which borrows the context too.
                let mut deflater = std::mem::take(&mut ctx.deflater);
                let compressed_len = payload.len();
                let inflated = deflater.decompress(state, text, payload, config.limits.max_message_size);
                let result = inflated.map(|message| {
                    ctx.metrics.inflated(compressed_len, message.as_bytes().len());
                    handler.on_message(&mut Conn { key, conn, control, ctx }, message)
                });
                ctx.deflater = deflater;
                if let Err(error) = result {
                    let reason = CloseReason::Protocol(error);
                    let failed =
                        Conn { key, conn, control, ctx }.drive(|c, now, config, out| c.fail(reason, now, config, out));
                    if let Some(reason) = failed {
                        report_close(handler, key, conn, control, ctx, &reason);
                    }
                    return;
                }
            }
            Some(Received::Pong(payload)) => handler.on_pong(&mut Conn { key, conn, control, ctx }, payload),
        }
        settle(handler, key, conn, control, ctx);
    }
}

/// The machine ended the connection for `reason` (the peer's close, or a
/// protocol error of its): follow it, and tell the handler.
fn ended<H: Handler>(
    handler: &mut H,
    key: usize,
    conn: &mut Transport<H::Data>,
    control: &mut Control<Tick>,
    ctx: &mut WorkerState,
    reason: &CloseReason,
) {
    ctx.follow(key, conn, control);
    report_close(handler, key, conn, control, ctx, reason);
}

/// Calls `on_close` for an opened connection (the machine hands out the
/// reason once, so this runs once).
pub(super) fn report_close<H: Handler>(
    handler: &mut H,
    key: usize,
    conn: &mut Transport<H::Data>,
    control: &mut Control<Tick>,
    ctx: &mut WorkerState,
    reason: &CloseReason,
) {
    crate::runtime::logs::closed(ConnId::new(ctx.worker, key, conn.generation), &conn.socket, reason);
    if conn.has(flag::OPENED) {
        handler.on_close(&mut Conn { key, conn, control, ctx }, reason);
    }
}

/// After a callback: report a close the callback caused (a send over budget).
pub(super) fn settle<H: Handler>(
    handler: &mut H,
    key: usize,
    conn: &mut Transport<H::Data>,
    control: &mut Control<Tick>,
    ctx: &mut WorkerState,
) {
    if conn.has(flag::CLOSE_PENDING) {
        conn.flags &= !flag::CLOSE_PENDING;
        report_close(handler, key, conn, control, ctx, &CloseReason::SendBufferFull);
    }
}
