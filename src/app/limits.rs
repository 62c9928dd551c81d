//! Abuse limits of the event layer, and the per-socket token bucket.

use std::time::Duration;

/// What happens when a socket breaks a limit or sends a malformed envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Answer with an error (a `[3, id, …]` reply to a request, otherwise an
    /// `@error` event) and keep the connection.
    Reply,
    /// Close the connection: 1007 (invalid payload data) for a text frame
    /// whose JSON does not parse, 1008 (policy violation) for everything
    /// else (valid JSON that is no envelope, a bad id or name, a binary
    /// frame, a limit broken).
    Close,
}

/// A token bucket: `per_second` envelopes on average, bursts of `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f32,
    /// The bucket's size: a socket may send this many at once.
    pub burst: f32,
}

/// The event layer's limits (the engine's frame limits are
/// [`proto::Limits`](crate::proto::Limits)). Each has a default; change them
/// with the builder methods and hand the result to
/// [`App::limits`](super::App::limits).
///
/// ```
/// use emitws::app::{App, EventLimits, Policy, Rate};
/// let mut app = App::new();
/// app.limits(EventLimits::default().rate(Some(Rate { per_second: 50.0, burst: 100.0 })).over_rate(Policy::Close));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct EventLimits {
    /// The longest event name, in bytes (default 128). Longer: `bad_request`.
    pub max_event_name: usize,
    /// The largest envelope, in bytes of JSON text (default 64 KiB). Larger: `too_large`.
    pub max_message: usize,
    /// The deepest nesting of arrays and objects, counting the envelope's own
    /// array (default 32, so data may be 31 deep). Deeper: `bad_request`.
    pub max_depth: usize,
    /// Rooms and tags one socket may be in (default 64). More: `join` fails.
    pub max_groups_per_socket: usize,
    /// Requests one socket may have waiting for a deferred reply, and calls the
    /// server may have waiting on it (default 64 each). More: `rate_limited`.
    pub max_pending: usize,
    /// Envelopes per second per socket, or `None` for no limit (default 100
    /// per second, bursts of 200). Every text frame counts (unknown envelope
    /// types and stray replies too) except answers (`[2,id,..]`, `[3,id,..]`)
    /// to the server's own calls still waiting on the socket: those are
    /// never counted nor dropped.
    pub rate: Option<Rate>,
    /// What an envelope over the rate gets (default [`Policy::Reply`]: a
    /// request is answered `rate_limited`; other envelopes get one
    /// `rate_limited` `@error` until the socket's bucket lets a message
    /// through again, and are dropped silently after it).
    pub over_rate: Policy,
    /// What a malformed or over-limit envelope gets (default [`Policy::Reply`]).
    pub on_bad_input: Policy,
    /// Time to complete authentication (first-message identify or the
    /// challenge) before the socket is closed with 4408 (default 10 s).
    pub auth_timeout: Duration,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_event_name: 128,
            max_message: 64 << 10,
            max_depth: 32,
            max_groups_per_socket: 64,
            max_pending: 64,
            rate: Some(Rate { per_second: 100.0, burst: 200.0 }),
            over_rate: Policy::Reply,
            on_bad_input: Policy::Reply,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

impl EventLimits {
    /// Sets `max_event_name`: the longest event name, in bytes.
    pub fn max_event_name(mut self, max_event_name: usize) -> Self {
        self.max_event_name = max_event_name;
        self
    }

    /// Sets `max_message`: the largest envelope, in bytes of JSON text.
    pub fn max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// Sets `max_depth`: the deepest nesting of arrays and objects, the envelope's own array counted.
    pub fn max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets `max_groups_per_socket`: rooms and tags one socket may be in.
    pub fn max_groups_per_socket(mut self, max_groups_per_socket: usize) -> Self {
        self.max_groups_per_socket = max_groups_per_socket;
        self
    }

    /// Sets `max_pending`: deferred replies and server calls one socket may have waiting, each.
    pub fn max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Sets `rate`: envelopes per second per socket, or `None` for no limit.
    pub fn rate(mut self, rate: Option<Rate>) -> Self {
        self.rate = rate;
        self
    }

    /// Sets `over_rate`: what an envelope over the rate gets.
    pub fn over_rate(mut self, over_rate: Policy) -> Self {
        self.over_rate = over_rate;
        self
    }

    /// Sets `on_bad_input`: what a malformed or over-limit envelope gets.
    pub fn on_bad_input(mut self, on_bad_input: Policy) -> Self {
        self.on_bad_input = on_bad_input;
        self
    }

    /// Sets `auth_timeout`: time to complete authentication before the socket is closed with 4408.
    pub fn auth_timeout(mut self, auth_timeout: Duration) -> Self {
        self.auth_timeout = auth_timeout;
        self
    }
}

/// A socket's bucket: tokens left and when it was last filled, in
/// milliseconds since the app started (8 bytes per socket).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bucket {
    tokens: f32,
    filled_at: u32,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: &Rate, now_ms: u32) -> Bucket {
        Bucket { tokens: rate.burst, filled_at: now_ms }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: &Rate, now_ms: u32) -> bool {
        let elapsed = now_ms.wrapping_sub(self.filled_at) as f32 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.filled_at = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether `byte` may appear in an event name: visible ASCII but `"` and
/// `\`, so that names never need JSON escapes. A table: names are checked on
/// every envelope.
pub(crate) fn is_name_byte(byte: u8) -> bool {
    const NAME_BYTES: [bool; 256] = {
        let mut table = [false; 256];
        let mut byte = 0x21;
        while byte < 0x7f {
            table[byte] = byte != b'"' as usize && byte != b'\\' as usize;
            byte += 1;
        }
        table
    };
    NAME_BYTES[usize::from(byte)]
}

/// Whether `name` is a valid user event name: starts with `/`, at most `max`
/// bytes (the envelope parser has checked that its bytes are name bytes).
pub(crate) fn check_event_name(name: &str, max: usize) -> Result<(), &'static str> {
    if name.len() > max {
        return Err("event name too long");
    }
    if name.starts_with('@') {
        return Err("system events (@…) cannot be sent by clients");
    }
    if !name.starts_with('/') {
        return Err("event names start with '/'");
    }
    Ok(())
}

/// Whether `name` is a valid room (`#…`) or tag (`*…`) name.
pub(crate) fn check_group_name(name: &str) -> bool {
    name.len() > 1 && name.len() <= 128 && (name.starts_with('#') || name.starts_with('*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_up_to_the_burst() {
        let rate = Rate { per_second: 10.0, burst: 3.0 };
        let mut bucket = Bucket::full(&rate, 0);
        assert!((0..3).all(|_| bucket.take(&rate, 0)));
        assert!(!bucket.take(&rate, 0));
        assert!(!bucket.take(&rate, 50), "half a token after 50 ms");
        assert!(bucket.take(&rate, 100));
        assert_eq!((0..10).filter(|_| bucket.take(&rate, 10_000)).count(), 3, "capped at the burst");
    }

    #[test]
    fn names() {
        assert!(check_event_name("/chat/say", 128).is_ok());
        assert!(check_event_name("@connection", 128).is_err());
        assert!(check_event_name("chat", 128).is_err());
        assert!(!is_name_byte(b' ') && !is_name_byte(b'"') && !is_name_byte(b'\\') && !is_name_byte(0xc3));
        assert!(is_name_byte(b'/') && is_name_byte(b'~') && is_name_byte(b'!'));
        assert!(check_event_name("/abc", 3).is_err());
        assert!(check_group_name("#lobby") && check_group_name("*admin"));
        assert!(!check_group_name("#") && !check_group_name("lobby"));
    }
}
