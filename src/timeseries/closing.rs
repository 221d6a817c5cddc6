//! When the buckets of one entity's live series close, and which closed
//! bucket a late event revises: the state machine behind
//! `<product>Buckets` (`api/graphql/bucket_feed.rs`), on plain event
//! times, with no store and no GraphQL.
//!
//! The **watermark** is the newest event time seen. A bucket
//! `[start, end)` (aligned as `series` aligns them) **closes** once the
//! watermark reaches `end + lateness`; an event whose bucket has already
//! closed is **late** and *revises* that bucket. What closes or is revised
//! is only a bucket start here: the caller recomputes the bucket from the
//! store (the same code as `series`), so nothing about the events is kept.
//!
//! A caller may also observe the clock (when [`Closer::next_close_at`]
//! comes) to close buckets of an entity that stopped sending; the
//! watermark is then the newest of event times and clock readings.
//!
//! State is O(1): the watermark and the first bucket still open. The
//! caller's per-batch [`Flush`] holds the close ranges and revised starts
//! of one batch of changes, so its size is bounded by the batch.
//!
//! Which closed buckets can hold events: every event at or below the
//! watermark was seen before the watermark moved (the caller starts from
//! the entity's newest event time in the store), so when an event moves
//! the watermark from `w` to `w'`, the buckets that close are
//! `[first open, first open at w')`, but only those up to the bucket of
//! `w` can hold events. A watermark that jumps a year ahead closes the
//! few buckets below the old watermark, not a year of empty ones: a close
//! range spans at most `lateness / every + 1` buckets.

use std::collections::BTreeSet;

/// The close and revision state of one live series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Closer {
    every: i64,
    lateness: i64,
    /// The newest event time seen (µs); `None` before the first event.
    watermark: Option<i64>,
}

/// What one event does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// It lands in a bucket still open; nothing to emit.
    Open,
    /// It is late: the closed bucket starting here is to be emitted again.
    Revise(i64),
    /// It moved the watermark and closed the buckets in `[from, to)`
    /// (aligned starts; only these can hold events; empty ones are left
    /// out by the caller).
    Close { from: i64, to: i64 },
}

impl Closer {
    /// `every` > 0 and `lateness` ≥ 0, in µs; `watermark`: the entity's
    /// newest event time already stored (its buckets before the first
    /// open one count as closed).
    pub fn new(every: i64, lateness: i64, watermark: Option<i64>) -> Closer {
        Closer {
            every: every.max(1),
            lateness: lateness.max(0),
            watermark,
        }
    }

    /// The start of the bucket holding `t`.
    pub fn bucket(&self, t: i64) -> i64 {
        t.div_euclid(self.every).saturating_mul(self.every)
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The first bucket not closed at the current watermark (every bucket
    /// before it is closed); `None` before the first event.
    pub fn first_open(&self) -> Option<i64> {
        self.watermark.map(|w| self.first_open_at(w))
    }

    /// When (in the watermark's time) the first open bucket closes: its
    /// end plus the lateness. A clock-driven caller observes the clock at
    /// that moment (`<product>Buckets(wallClock: true)`).
    pub fn next_close_at(&self) -> Option<i64> {
        self.first_open().map(|open| {
            open.saturating_add(self.every)
                .saturating_add(self.lateness)
        })
    }

    /// The smallest aligned start `s` with `s + every + lateness > w`.
    fn first_open_at(&self, w: i64) -> i64 {
        self.bucket(w.saturating_sub(self.lateness))
    }

    /// One event at event time `t`.
    pub fn observe(&mut self, t: i64) -> Step {
        let Some(w) = self.watermark else {
            self.watermark = Some(t);
            return Step::Open;
        };
        let open = self.first_open_at(w);
        let bucket = self.bucket(t);
        if bucket < open {
            return Step::Revise(bucket);
        }
        if t <= w {
            return Step::Open;
        }
        self.watermark = Some(t);
        let now_open = self.first_open_at(t);
        // Only buckets up to the old watermark's can hold events.
        let to = now_open.min(self.bucket(w).saturating_add(self.every));
        if now_open > open && to > open {
            Step::Close { from: open, to }
        } else {
            Step::Open
        }
    }
}

/// What one batch of changes asks to emit: close ranges in order, and
/// revised buckets (each once, and none a close of the same batch already
/// recomputes).
#[derive(Debug, Default, PartialEq)]
pub struct Flush {
    closes: Vec<(i64, i64)>,
    revisions: BTreeSet<i64>,
}

impl Flush {
    pub fn add(&mut self, step: Step) {
        match step {
            Step::Open => {}
            Step::Revise(start) => {
                self.revisions.insert(start);
            }
            Step::Close { from, to } => match self.closes.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => self.closes.push((from, to)),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.closes.is_empty() && self.revisions.is_empty()
    }

    /// The close ranges (ascending, disjoint) and the revised starts not
    /// inside one of them (ascending): a bucket closed in this batch is
    /// recomputed after the whole batch, late events included.
    pub fn finish(self) -> (Vec<(i64, i64)>, Vec<i64>) {
        let closes = self.closes;
        let revisions = self
            .revisions
            .into_iter()
            .filter(|s| !closes.iter().any(|(from, to)| from <= s && s < to))
            .collect();
        (closes, revisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000_000;

    #[test]
    fn buckets_close_when_the_watermark_reaches_their_end() {
        let mut c = Closer::new(M, 0, None);
        assert_eq!(c.observe(10), Step::Open, "the first event opens");
        assert_eq!(c.first_open(), Some(0));
        assert_eq!(c.observe(M - 1), Step::Open);
        assert_eq!(
            c.observe(M),
            Step::Close { from: 0, to: M },
            "an event at the end closes [0, M)"
        );
        assert_eq!(c.first_open(), Some(M));
        assert_eq!(c.observe(M + 5), Step::Open);
        assert_eq!(c.observe(M), Step::Open, "same instant, still open");
        assert_eq!(c.observe(3 * M + 1), Step::Close { from: M, to: 2 * M });
        assert_eq!(c.watermark(), Some(3 * M + 1));
    }

    #[test]
    fn lateness_holds_a_bucket_open() {
        let lateness = 30_000_000;
        let mut c = Closer::new(M, lateness, Some(lateness + 10));
        assert_eq!(c.first_open(), Some(0));
        assert_eq!(c.observe(M), Step::Open, "end reached, lateness not");
        assert_eq!(c.observe(M + lateness - 1), Step::Open);
        assert_eq!(
            c.observe(20),
            Step::Open,
            "late within lateness: still open"
        );
        assert_eq!(c.observe(M + lateness), Step::Close { from: 0, to: M });
        assert_eq!(c.observe(20), Step::Revise(0), "now late: a revision");
        // A lateness of several buckets keeps several open.
        let mut c = Closer::new(M, 3 * M, Some(3 * M));
        assert_eq!(c.observe(3 * M + 1), Step::Open);
        assert_eq!(c.observe(M), Step::Open, "bucket [M, 2M) is open");
        assert_eq!(c.observe(5 * M), Step::Close { from: 0, to: 2 * M });
        assert_eq!(c.observe(M + 1), Step::Revise(M));
        assert_eq!(c.observe(2 * M), Step::Open);
    }

    #[test]
    fn a_clock_observed_at_the_next_close_closes_the_open_bucket() {
        let mut c = Closer::new(M, 5, None);
        assert_eq!(c.next_close_at(), None, "nothing seen, nothing to close");
        c.observe(M + 10);
        assert_eq!(c.next_close_at(), Some(2 * M + 5));
        assert_eq!(c.observe(2 * M + 4), Step::Open);
        assert_eq!(c.observe(2 * M + 5), Step::Close { from: M, to: 2 * M });
        assert_eq!(c.next_close_at(), Some(3 * M + 5));
        // The next tick closes the bucket the last one fell in (the
        // caller's read finds it empty and sends nothing).
        assert_eq!(
            c.observe(3 * M + 5),
            Step::Close {
                from: 2 * M,
                to: 3 * M
            }
        );
    }

    #[test]
    fn a_jump_closes_only_buckets_that_can_hold_events() {
        let year = 365 * 24 * 60 * M;
        let mut c = Closer::new(M, 2 * M, Some(5 * M + 7));
        assert_eq!(c.first_open(), Some(3 * M));
        // Open buckets were [3M, 6M); the jump closes those, not a year.
        assert_eq!(
            c.observe(year),
            Step::Close {
                from: 3 * M,
                to: 6 * M
            }
        );
        assert_eq!(c.first_open(), Some(year - 2 * M));
        assert_eq!(c.observe(year - M), Step::Open);
        assert_eq!(
            c.observe(6 * M),
            Step::Revise(6 * M),
            "a gap bucket is late"
        );
    }

    #[test]
    fn negative_times_align_like_series() {
        let mut c = Closer::new(M, 0, Some(-1));
        assert_eq!(c.first_open(), Some(-M));
        assert_eq!(c.observe(0), Step::Close { from: -M, to: 0 });
        assert_eq!(c.observe(-M - 1), Step::Revise(-2 * M));
    }

    #[test]
    fn a_flush_merges_closes_and_drops_revisions_they_recompute() {
        let mut c = Closer::new(M, 0, Some(0));
        let mut flush = Flush::default();
        for t in [M, 2 * M, 10, 2 * M + 1, M + 3, 10, 4 * M, 3 * M + 1] {
            flush.add(c.observe(t));
        }
        // [0, M) closed at M, [M, 2M) at 2M; 10 and M+3 revise buckets
        // this batch closed (recomputed after it anyway); 4M closes
        // [2M, 3M) (the old watermark's bucket); 3M+1 is late.
        let (closes, revisions) = flush.finish();
        assert_eq!(closes, vec![(0, 3 * M)]);
        assert_eq!(revisions, vec![3 * M]);
        let mut flush = Flush::default();
        flush.add(c.observe(7));
        flush.add(c.observe(9));
        assert!(!flush.is_empty());
        assert_eq!(flush.finish(), (vec![], vec![0]), "each bucket once");
    }

    /// Against brute force: every bucket below the final watermark's
    /// first open one was closed exactly once if it had events, and
    /// every event whose bucket was already closed revised it.
    #[test]
    fn closes_and_revisions_match_brute_force_on_random_streams() {
        use rand::{Rng, SeedableRng};
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let every = rng.random_range(1..5) * 10;
            let lateness = rng.random_range(0..4) * 7;
            let mut c = Closer::new(every, lateness, None);
            let mut seen: Vec<i64> = Vec::new();
            let mut closed: Vec<i64> = Vec::new();
            let mut t = 0i64;
            for _ in 0..300 {
                t += rng.random_range(0..15);
                let time = if rng.random_bool(0.2) {
                    t - rng.random_range(0..60)
                } else if rng.random_bool(0.02) {
                    t += 500;
                    t
                } else {
                    t
                };
                let before = c.first_open();
                let step = c.observe(time);
                let bucket = time.div_euclid(every) * every;
                match step {
                    Step::Revise(b) => {
                        assert_eq!(b, bucket);
                        assert!(before.is_some_and(|open| b < open), "{seed}");
                    }
                    Step::Close { from, to } => {
                        assert_eq!(Some(from), before, "{seed}: closes start at the first open");
                        let mut s = from;
                        while s < to {
                            closed.push(s);
                            s += every;
                        }
                    }
                    Step::Open => {
                        assert!(before.is_none_or(|open| bucket >= open), "{seed}");
                    }
                }
                seen.push(time);
            }
            let open = c.first_open().expect("events seen");
            let w = c.watermark().expect("events seen");
            assert_eq!(w, *seen.iter().max().expect("events"));
            // Every bucket with an event seen while it was open and now
            // below `open` was in a close range, each exactly once.
            let mut holding: Vec<i64> = seen
                .iter()
                .map(|t| t.div_euclid(every) * every)
                .filter(|b| *b < open)
                .collect();
            holding.sort();
            holding.dedup();
            closed.sort();
            assert!(
                closed.windows(2).all(|w| w[0] < w[1]),
                "{seed}: closed twice"
            );
            for b in holding {
                let late_only = seen
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.div_euclid(every) * every == b)
                    .all(|(i, _)| {
                        // Every event of the bucket came after the bucket
                        // closed: it is emitted by revisions only.
                        let w_before = seen[..i].iter().max().copied();
                        w_before.is_some_and(|w| b + every + lateness <= w)
                    });
                assert!(
                    late_only || closed.contains(&b),
                    "{seed}: bucket {b} had events but never closed"
                );
            }
        }
    }
}
