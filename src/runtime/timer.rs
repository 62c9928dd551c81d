//! A hashed timer wheel: one slot per tick, entries re-armed lazily.
//!
//! Connections keep their own deadline; the wheel only says when to look at
//! them. An entry that fires early (its connection's deadline moved later) is
//! simply re-armed, and an entry for a connection whose armed tick no longer
//! matches is dropped as stale. So moving a deadline later costs nothing, which
//! keeps per-message keepalive bookkeeping free.

use std::time::{Duration, Instant};

/// One tick of the wheel.
pub(crate) const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;

/// A scheduled look at connection `key`, valid while its `generation` and
/// armed tick still match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: u32,
    pub generation: u32,
    pub tick: u32,
}

#[derive(Debug)]
pub(crate) struct Wheel {
    start: Instant,
    /// The last tick whose slot has been processed.
    done: u32,
    slots: Vec<Vec<Entry>>,
    /// One bit per non-empty slot, to find the next due slot without a scan.
    occupied: [u64; SLOTS / 64],
    len: usize,
}

impl Wheel {
    pub fn new(start: Instant) -> Wheel {
        Wheel { start, done: 0, slots: vec![Vec::new(); SLOTS], occupied: [0; SLOTS / 64], len: 0 }
    }

    /// The tick `now` falls in.
    pub fn tick_of(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.start).as_millis() / TICK.as_millis()) as u32
    }

    /// The first tick at or after `now_tick + after`.
    pub fn deadline_ticks(&self, now_tick: u32, after: Duration) -> u32 {
        let ticks = after.as_millis().div_ceil(TICK.as_millis()).min(u32::MAX as u128) as u32;
        now_tick.saturating_add(ticks.max(1))
    }

    /// Schedules a look at `key` at `tick` (or at the wheel's horizon, if
    /// farther; it is then re-armed). Returns the tick actually armed.
    pub fn arm(&mut self, key: u32, generation: u32, tick: u32) -> u32 {
        let tick = tick.clamp(self.done + 1, self.done + SLOTS as u32 - 1);
        let slot = tick as usize % SLOTS;
        self.slots[slot].push(Entry { key, generation, tick });
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
        tick
    }

    /// Takes every entry due at or before `now_tick`, in tick order.
    pub fn expire(&mut self, now_tick: u32, due: &mut Vec<Entry>) {
        while self.done < now_tick {
            if self.len == 0 {
                self.done = now_tick;
                return;
            }
            self.done += 1;
            let slot = self.done as usize % SLOTS;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let entries = &mut self.slots[slot];
            self.len -= entries.len();
            due.append(entries);
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
    }

    /// How long the event loop may sleep before the next entry is due.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let now_tick = self.tick_of(now);
        let mut tick = self.done + 1;
        while tick < self.done + SLOTS as u32 {
            let slot = tick as usize % SLOTS;
            let word = self.occupied[slot / 64] >> (slot % 64);
            if word == 0 {
                tick += 64 - (slot % 64) as u32;
                continue;
            }
            tick += word.trailing_zeros();
            break;
        }
        if tick <= now_tick {
            return Some(Duration::ZERO);
        }
        let at = self.start + TICK * tick;
        Some(at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_at_their_tick_and_not_before() {
        let start = Instant::now();
        let mut wheel = Wheel::new(start);
        wheel.arm(1, 0, 5);
        wheel.arm(2, 0, 300);
        let far = wheel.arm(3, 0, 1_000_000);
        assert_eq!(far, SLOTS as u32 - 1, "clamped to the horizon");
        let mut due = Vec::new();
        wheel.expire(4, &mut due);
        assert!(due.is_empty());
        assert_eq!(wheel.next_timeout(start + TICK * 4), Some(TICK));
        wheel.expire(5, &mut due);
        assert_eq!(due.iter().map(|e| e.key).collect::<Vec<_>>(), [1]);
        due.clear();
        assert_eq!(wheel.next_timeout(start + TICK * 5), Some(TICK * 295));
        wheel.expire(5000, &mut due);
        assert_eq!(due.iter().map(|e| e.key).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(wheel.next_timeout(start), None);
    }

    #[test]
    fn deadline_rounds_up_to_a_whole_tick() {
        let wheel = Wheel::new(Instant::now());
        assert_eq!(wheel.deadline_ticks(0, Duration::from_millis(1)), 1);
        assert_eq!(wheel.deadline_ticks(7, Duration::from_millis(25)), 10);
    }
}
