//! A hashed timer wheel: one slot per tick, entries re-armed lazily.
//!
//! Connections keep their own deadline; the wheel only says when to look at
//! them. An entry that fires early (its connection's deadline moved later) is
//! simply re-armed, so moving a deadline later costs nothing, which keeps
//! per-message keepalive bookkeeping free. Moving it earlier cancels the
//! entry and arms a new one: a connection has at most one entry.
//!
//! Entries live in one shared array and each slot is a doubly linked list
//! through it, so memory follows the entries alive at once. (A vector per
//! slot kept every slot's largest burst: a keepalive round moves a burst of
//! entries to slots it had not visited, and memory grew round after round.)

use std::time::{Duration, Instant};

use crate::proto::connection::Time;

/// One tick of the wheel.
pub(crate) const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;
/// The end of a slot's list, and of the free list.
const NONE: u32 = u32::MAX;
/// A connection's entry when it has none (see [`Wheel::arm`]).
pub(crate) const NO_ENTRY: u32 = NONE;

/// A point on a worker's clock, in wheel ticks since the wheel started: the
/// [`Time`] a connection's protocol machine counts its deadline in on the
/// server (4 bytes per connection where an `Instant` takes 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(pub u32);

impl Time for Tick {
    /// The first tick at or after `self + duration`, and at least the next
    /// one: a deadline never falls in the tick being expired.
    fn after(self, duration: Duration) -> Tick {
        let ticks = duration.as_millis().div_ceil(TICK.as_millis()).min(u32::MAX as u128) as u32;
        Tick(self.0.saturating_add(ticks.max(1)))
    }
}

/// A scheduled look at connection `key`, valid while its `generation` and
/// armed tick still match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: u32,
    pub generation: u32,
    pub tick: u32,
}

/// An entry and its neighbours in its slot (`next` also links the free list).
/// A free node has tick 0, which no armed entry has.
#[derive(Clone, Copy, Debug)]
struct Node {
    entry: Entry,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub(crate) struct Wheel {
    start: Instant,
    /// The last tick whose slot has been processed.
    done: u32,
    /// Each slot's first node, or `NONE`.
    heads: Box<[u32]>,
    /// Every node, in use or free; as long as the most entries ever armed at once.
    nodes: Vec<Node>,
    /// The first free node, or `NONE`.
    free: u32,
    /// One bit per non-empty slot, to find the next due slot without a scan.
    occupied: [u64; SLOTS / 64],
    len: usize,
}

impl Wheel {
    pub fn new(start: Instant) -> Wheel {
        Wheel {
            start,
            done: 0,
            heads: vec![NONE; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
            free: NONE,
            occupied: [0; SLOTS / 64],
            len: 0,
        }
    }

    /// Entries armed and not yet expired (stale ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries the wheel has room for without allocating: its memory, in entries.
    pub fn capacity(&self) -> usize {
        self.nodes.capacity()
    }

    /// The tick `now` falls in.
    pub fn tick_of(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.start).as_millis() / TICK.as_millis()) as u32
    }

    /// Schedules a look at `key` at `tick` (or at the wheel's horizon, if
    /// farther; it is then re-armed). Returns the entry's index, which the
    /// connection keeps (and nothing else: the tick is read back with
    /// [`armed_tick`](Self::armed_tick), so a connection pays 4 bytes for its entry).
    pub fn arm(&mut self, key: u32, generation: u32, tick: u32) -> u32 {
        let tick = tick.clamp(self.done + 1, self.done + SLOTS as u32 - 1);
        let slot = tick as usize % SLOTS;
        let head = self.heads[slot];
        let node = Node { entry: Entry { key, generation, tick }, prev: NONE, next: head };
        let index = if self.free == NONE {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        } else {
            let index = self.free;
            self.free = self.nodes[index as usize].next;
            self.nodes[index as usize] = node;
            index
        };
        if head != NONE {
            self.nodes[head as usize].prev = index;
        }
        self.heads[slot] = index;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
        index
    }

    /// The tick entry `index` is armed for, if it is still armed for `key`
    /// and `generation` (it may have expired, and its node been reused, since).
    #[inline]
    pub fn armed_tick(&self, index: u32, key: u32, generation: u32) -> Option<u32> {
        let entry = self.nodes.get(index as usize)?.entry;
        // A free node has tick 0.
        (entry.key == key && entry.generation == generation && entry.tick != 0).then_some(entry.tick)
    }

    /// Removes entry `index`, if it is still armed for `key` and `generation`.
    pub fn cancel(&mut self, index: u32, key: u32, generation: u32) {
        let Some(tick) = self.armed_tick(index, key, generation) else { return };
        let node = self.nodes[index as usize];
        let slot = tick as usize % SLOTS;
        match node.prev {
            NONE => self.heads[slot] = node.next,
            prev => self.nodes[prev as usize].next = node.next,
        }
        if node.next != NONE {
            self.nodes[node.next as usize].prev = node.prev;
        }
        if self.heads[slot] == NONE {
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
        self.release(index);
        self.shrink_if_empty();
    }

    /// Puts a node on the free list.
    fn release(&mut self, index: u32) {
        let node = &mut self.nodes[index as usize];
        node.entry.tick = 0;
        node.next = self.free;
        self.free = index;
        self.len -= 1;
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
            let mut index = std::mem::replace(&mut self.heads[slot], NONE);
            while index != NONE {
                let node = self.nodes[index as usize];
                due.push(node.entry);
                self.release(index);
                index = node.next;
            }
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
        self.shrink_if_empty();
    }

    /// Gives back the memory of the last burst once nothing is armed.
    fn shrink_if_empty(&mut self) {
        if self.len == 0 && !self.nodes.is_empty() {
            self.nodes = Vec::new();
            self.free = NONE;
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
        assert_eq!(wheel.armed_tick(far, 3, 0), Some(SLOTS as u32 - 1), "clamped to the horizon");
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
    fn memory_follows_live_entries_not_slots_visited() {
        // Keepalive rounds: a burst armed in one tick comes due together and
        // is re-armed 3000 ticks on, a slot not visited before (3000 and the
        // wheel's 4096 slots are coprime-ish), round after round.
        let mut wheel = Wheel::new(Instant::now());
        let burst = 1000;
        let mut due = Vec::new();
        let mut now = 0;
        for round in 0..50 {
            for key in 0..burst {
                wheel.arm(key, round, now + 3000);
            }
            // One more entry, due a tick after the burst, so the wheel is
            // never empty (an empty one gives its memory back).
            wheel.arm(burst, round, now + 3001);
            now += 3000;
            wheel.expire(now, &mut due);
            let fired = if round == 0 { burst } else { burst + 1 };
            assert_eq!(due.len(), fired as usize);
            due.clear();
            assert!(wheel.capacity() <= 2 * (burst as usize + 2), "round {round}: {}", wheel.capacity());
        }
        wheel.expire(now + 1, &mut due);
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.capacity(), 0, "an empty wheel keeps no entries' memory");
    }

    #[test]
    fn freed_entries_are_reused() {
        let mut wheel = Wheel::new(Instant::now());
        let mut due = Vec::new();
        for tick in 1..10_000u32 {
            wheel.arm(tick, 0, tick + 5);
            wheel.expire(tick, &mut due);
        }
        assert_eq!(due.len(), 10_000 - 1 - 5);
        assert!(wheel.capacity() <= 8, "{}", wheel.capacity());
    }

    #[test]
    fn a_cancelled_entry_never_fires_and_its_room_is_reused() {
        let mut wheel = Wheel::new(Instant::now());
        let first = wheel.arm(1, 7, 10);
        let second = wheel.arm(2, 7, 10);
        let third = wheel.arm(3, 7, 10);
        assert_eq!(wheel.armed_tick(second, 2, 7), Some(10));
        wheel.cancel(second, 2, 7);
        assert_eq!(wheel.armed_tick(second, 2, 7), None);
        // A second cancel, or one with another entry's identity, does nothing.
        wheel.cancel(second, 2, 7);
        wheel.cancel(first, 1, 6);
        assert_eq!(wheel.len(), 2);
        let mut due = Vec::new();
        wheel.expire(10, &mut due);
        assert_eq!(due.iter().map(|e| e.key).collect::<Vec<_>>(), [3, 1]);
        assert_eq!(wheel.armed_tick(third, 3, 7), None, "expired");
        wheel.cancel(third, 3, 7);
        assert_eq!(wheel.len(), 0);
        let index = wheel.arm(4, 0, 20);
        // The expired entries' nodes are reused: an old index names the new entry only for its own key.
        assert_eq!(wheel.armed_tick(index, 4, 0), Some(20));
        wheel.cancel(index, 4, 0);
        assert_eq!(wheel.next_timeout(Instant::now()), None, "the slot is empty again");
    }

    #[test]
    fn deadline_rounds_up_to_a_whole_tick() {
        assert_eq!(Tick(0).after(Duration::from_millis(1)), Tick(1));
        assert_eq!(Tick(7).after(Duration::from_millis(25)), Tick(10));
    }
}
