//! A log-linear latency histogram: 128 linear buckets per power of two, so
//! every bucket is at most 1/128 (0.78%) of its values wide. Recording is a
//! few integer operations into a preallocated table; nothing allocates after
//! [`Histogram::new`].

/// Linear sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `2 * SUB` get one bucket each; every further power of two up
/// to 2^63 gets `SUB` buckets.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of values (nanoseconds here) with ~1% precision, plus exact min, max and sum.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// The bucket a value falls in.
fn index(value: u64) -> usize {
    let msb = 63 - (value | 1).leading_zeros();
    if msb <= SUB_BITS {
        return value as usize;
    }
    let shift = msb - SUB_BITS;
    ((shift as u64) << SUB_BITS) as usize + (value >> shift) as usize
}

/// The smallest value and the bucket width of bucket `index`.
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < 2 * SUB {
        return (index, 1);
    }
    let shift = (index >> SUB_BITS) - 1;
    let top = index - (shift << SUB_BITS);
    (top << shift, 1 << shift)
}

impl Histogram {
    /// An empty histogram (one 58 KiB table).
    pub fn new() -> Histogram {
        Histogram { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0, min: u64::MAX, max: 0, sum: 0 }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (exact), or 0.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact), or 0.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket
    /// holding the `ceil(q * count)`-th smallest value, never above the exact
    /// maximum nor below the exact minimum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(i);
                return (low + (width - 1)).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: u64, expected: u64) {
        let error = (actual as f64 - expected as f64).abs() / expected as f64;
        assert!(error <= 0.01, "{actual} is not within 1% of {expected}");
    }

    #[test]
    fn buckets_cover_every_value_with_under_one_percent_width() {
        let mut samples: Vec<u64> = (0..5000).collect();
        for shift in 0..64 {
            let p = 1u64 << shift;
            samples.extend([p - 1, p, p + 1, p + p / 3, p.wrapping_mul(2).wrapping_sub(1)]);
        }
        samples.push(u64::MAX);
        for v in samples {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            let (low, width) = bounds(i);
            assert!(low <= v && v - low < width, "{v} not in bucket {i} = [{low}, +{width})");
            assert!(width == 1 || width as f64 / low as f64 <= 1.0 / SUB as f64, "bucket {i} too wide");
        }
        // Buckets are contiguous and increasing.
        for i in 1..BUCKETS {
            let (prev_low, prev_width) = bounds(i - 1);
            assert_eq!(bounds(i).0, prev_low + prev_width, "gap before bucket {i}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_uniform_distribution() {
        let mut hist = Histogram::new();
        for v in 1..=100_000u64 {
            hist.record(v * 1000); // 1 µs .. 100 ms in ns
        }
        assert_eq!(hist.count(), 100_000);
        assert_close(hist.quantile(0.5), 50_000_000);
        assert_close(hist.quantile(0.99), 99_000_000);
        assert_close(hist.quantile(0.999), 99_900_000);
        assert_eq!(hist.quantile(1.0), 100_000_000);
        assert_close(hist.quantile(0.0), 1000);
        assert_eq!(hist.max(), 100_000_000);
        assert!((hist.mean() - 50_000_500.0).abs() < 1.0);
    }

    #[test]
    fn quantiles_pick_out_a_tail_and_merge_adds_up() {
        let mut fast = Histogram::new();
        let mut slow = Histogram::new();
        for _ in 0..9_980 {
            fast.record(20_000);
        }
        for _ in 0..20 {
            slow.record(5_000_000);
        }
        fast.merge(&slow);
        assert_eq!(fast.count(), 10_000);
        assert_close(fast.quantile(0.5), 20_000);
        assert_close(fast.quantile(0.99), 20_000);
        // The 9,990th value is in the slow tail.
        assert_eq!(fast.quantile(0.999), 5_000_000);
        assert_eq!(fast.max(), 5_000_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }
}
