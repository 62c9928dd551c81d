//! The server side of the upgrade: the request head read, answered (101 or
//! an HTTP response), and the connection opened.

use super::*;
use crate::runtime::conn::Upgrading;
use crate::runtime::logs;

/// Feeds bytes to the request reader; on a complete head, answers it. Returns
/// how many bytes the head used if the connection is now open.
pub(super) fn handshake<H: Handler>(
    slot: &mut WorkerConn<H::Data>,
    key: usize,
    handler: &mut H,
    ctx: &mut WorkerState,
    input: &[u8],
) -> Option<usize> {
    let WorkerConn { machine, conn } = slot;
    let limits = ctx.settings.request_limits;
    let upgrade = &mut conn.extra.get_or_insert_with(Box::default).upgrade;
    // Taken out while it reads (put back if the head is not complete):
    // complete, it is answered and dropped.
    let mut reader = match upgrade.take() {
        Some(Upgrading::Request(reader)) => reader,
        // The worker gives an outgoing connection's bytes to `outgoing::response` instead.
        None | Some(Upgrading::Dialing(_)) => RequestReader::default(),
    };
    let used = match reader.push(input, &limits) {
        Ok(None) => {
            *upgrade = Some(Upgrading::Request(reader));
            return None;
        }
        Ok(Some(used)) => used,
        Err(e) => {
            logs::bad_upgrade(Some(ConnId::new(ctx.worker, key, conn.generation)), || conn.socket.peer_addr().ok(), &e);
            ctx.metrics.refused(e.status());
            ctx.queue(key, conn).push_with(|out| e.write_response(out));
            machine.reject(ctx.now(), &ctx.config);
            ctx.follow(key, conn, machine.control());
            return None;
        }
    };
    let settings = ctx.settings.clone();
    let peer = conn.socket.peer_addr().ok();
    let mut answered = Err(None);
    ctx.queue(key, conn).push_with(|out| answered = answer(&reader, peer, handler, &settings, out));
    let (accept, deflate) = match answered {
        Ok(accepted) => accepted,
        Err(refused) => {
            match refused {
                Some(status) => ctx.metrics.refused(status),
                None => ctx.metrics.http_answered.inc(),
            }
            logs::answered(ConnId::new(ctx.worker, key, conn.generation), peer);
            machine.reject(ctx.now(), &ctx.config);
            ctx.follow(key, conn, machine.control());
            return None;
        }
    };
    logs::upgraded(ConnId::new(ctx.worker, key, conn.generation), peer, &reader, &limits);
    if let (Some(agreement), Some(config)) = (deflate, settings.deflate) {
        slot.compress(DeflateState::new(Role::Server, agreement, config));
    }
    slot.conn.data = accept.data;
    open(handler, key, slot, ctx).then_some(used)
}

impl<D> WorkerConn<D> {
    /// permessage-deflate was agreed: compressed messages may arrive, and sends compress.
    pub(super) fn compress(&mut self, state: DeflateState) {
        self.conn.extra.get_or_insert_with(Box::default).deflate = Some(state);
        self.machine.allow_compressed(RSV1);
    }
}

/// The upgrade is done (either way round): the connection opens. Returns
/// whether it is still open after `on_open`.
pub(super) fn open<H: Handler>(
    handler: &mut H,
    key: usize,
    slot: &mut WorkerConn<H::Data>,
    ctx: &mut WorkerState,
) -> bool {
    let WorkerConn { machine, conn } = slot;
    conn.end_upgrade();
    machine.open(ctx.now(), conn.config(&ctx.config));
    conn.flags |= flag::OPENED;
    ctx.metrics.opened.inc();
    // The handshake deadline no longer applies: the keepalive's does, if any.
    ctx.disarm(key, conn);
    let control = machine.control();
    ctx.follow(key, conn, control);
    handler.on_open(&mut Conn { key, conn, control, ctx });
    settle(handler, key, conn, control, ctx);
    control.is_open()
}

/// An accepted upgrade: the handler's acceptance and any permessage-deflate agreement.
type Accepted<D> = (crate::runtime::Accept<D>, Option<DeflateAgreement>);

/// Answers a complete request head into `response`: the 101 (returning the
/// acceptance and any permessage-deflate agreement) or an HTTP response that
/// ends the connection (returning the status of a refused upgrade, or `None`
/// for a plain HTTP request the handler answered).
pub(super) fn answer<H: Handler>(
    reader: &RequestReader,
    peer: Option<SocketAddr>,
    handler: &mut H,
    settings: &Settings,
    response: &mut Vec<u8>,
) -> Result<Accepted<H::Data>, Option<u16>> {
    let request = match reader.request(&settings.request_limits) {
        Ok(request) => request,
        Err(e) => {
            logs::bad_upgrade(None, || peer, &e);
            e.write_response(response);
            return Err(Some(e.status()));
        }
    };
    if !request.is_websocket_upgrade() {
        match handler.on_http(&request) {
            Some(reply) => {
                let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                server::write_response(response, reply.status, &headers, &reply.body);
                return Err(None);
            }
            None => server::write_response(
                response,
                426,
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                b"This endpoint speaks WebSocket only.",
            ),
        }
        return Err(Some(426));
    }
    let upgrade = match request.websocket() {
        Ok(upgrade) => upgrade,
        Err(e) => {
            logs::bad_upgrade(None, || peer, &e);
            e.write_response(response);
            return Err(Some(e.status()));
        }
    };
    let origin = request.header("origin").and_then(|o| std::str::from_utf8(o).ok());
    if !settings.origins.allows(origin) {
        HandshakeError::OriginRejected.write_response(response);
        return Err(Some(HandshakeError::OriginRejected.status()));
    }
    let view = UpgradeRequest { request: &request, upgrade: &upgrade, peer };
    match handler.on_upgrade(&view) {
        Ok(mut accept) => {
            let offered = |p: &String| upgrade.protocols().any(|offer| offer == p);
            accept.protocol = accept.protocol.filter(offered);
            let deflate = settings.deflate.and_then(|config| {
                let offers: Vec<_> = upgrade.extensions().collect();
                deflate::accept_offer(&offers, &config)
            });
            let extensions = deflate.map(|agreement| agreement.to_string());
            server::write_accept(response, &upgrade.accept_key(), accept.protocol.as_deref(), extensions.as_deref());
            Ok((accept, deflate))
        }
        Err(reject) => {
            server::write_response(response, reject.status, &[], reject.body.as_bytes());
            Err(Some(reject.status))
        }
    }
}
