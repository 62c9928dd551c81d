//! Connections accepted elsewhere ([`ServerHandle::adopt`]): taken in as
//! accepted ones are, then the bytes already read from them go through the
//! path a socket read takes, so the upgrade is answered by the same code.

use super::*;

impl<H: Handler> Worker<H> {
    /// Takes in `stream` (plain TCP: whoever read `received` from it did not
    /// speak TLS on it) and hands `received` on as if it had just been read,
    /// in read-buffer-sized pieces. Whatever the socket holds beyond it is
    /// reported readable once the stream is registered, and read after.
    pub(super) fn adopt_received(&mut self, stream: TcpStream, received: &[u8]) {
        let Some(key) = self.take_in(stream, false) else { return };
        let generation = self.slab[key].conn.generation;
        for piece in received.chunks(self.read_buf.len()) {
            // A piece may end the connection (a refused upgrade is answered
            // and the rest is not looked at, as for a socket's reads).
            if !self.slab.get(key).is_some_and(|slot| slot.conn.generation == generation) {
                return;
            }
            self.read_buf[..piece.len()].copy_from_slice(piece);
            self.on_received(key, piece.len());
        }
    }
}
