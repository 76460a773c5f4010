//! Anti-replay window for data packet counters.
//!
//! UDP reorders and duplicates datagrams, and an attacker on the path can
//! record and resend them. Every data packet carries a 64-bit counter that
//! the sender never reuses under one key ([`crate::data`]); the receiver
//! keeps a [`ReplayWindow`] and accepts each counter at most once.
//!
//! The window is the bitmap of RFC 6479 §2 as WireGuard uses it: a ring of
//! `u64` blocks (8192 bits in all) indexed by `counter / 64`. When a counter
//! beyond the greatest one seen arrives, the window slides by whole blocks and
//! only the blocks that slide in are cleared, so advancing costs at most one
//! pass over the ring however far the counter jumps. One block is always
//! being recycled, which leaves [`WINDOW`] = 8128 counters behind the greatest
//! one tracked exactly; anything older is rejected as [`ReplayError::TooOld`].
//!
//! The check is split in two, as in WireGuard (whitepaper §5.4.6): [`check`]
//! is cheap and does not mutate, so forged packets are dropped before the AEAD
//! without being able to move the window; [`update`] records the counter only
//! after the packet has authenticated.
//!
//! [`check`]: ReplayWindow::check
//! [`update`]: ReplayWindow::update

/// Bits in one bitmap block.
const BLOCK_BITS: u64 = 64;
/// Blocks in the ring: 128 × 64 = 8192 bits (RFC 6479 §2, WireGuard's
/// `COUNTER_BITS_TOTAL`).
const RING_BLOCKS: usize = 128;

/// How many counters behind the greatest accepted one are still accepted:
/// counters in `max - WINDOW + 1 ..= max` are tracked, `max - WINDOW` and
/// older are [`ReplayError::TooOld`]. One block of the ring is the one being
/// recycled, hence `(128 - 1) × 64`.
pub const WINDOW: u64 = (RING_BLOCKS as u64 - 1) * BLOCK_BITS;

/// Counters at or beyond this are rejected by the receiver and never used by
/// the sender, so a session must be rekeyed before the 64-bit counter could
/// wrap (WireGuard's `REJECT_AFTER_MESSAGES`, whitepaper §6.1). The margin
/// also keeps `counter + WINDOW` from overflowing in [`ReplayWindow`].
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Why a counter was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This counter was already accepted.
    #[error("counter already received")]
    Duplicate,
    /// The counter is older than the window can tell apart.
    #[error("counter is behind the replay window")]
    TooOld,
    /// The counter is at or beyond [`REJECT_AFTER_MESSAGES`].
    #[error("counter is at or beyond the session's message limit")]
    CounterLimit,
}

/// Sliding bitmap of recently accepted counters (RFC 6479).
#[derive(Clone)]
pub struct ReplayWindow {
    /// Greatest counter accepted so far; 0 before any packet. Starting at 0
    /// with an empty bitmap makes counter 0 acceptable once, like any other.
    max: u64,
    /// Bit `c % 64` of block `(c / 64) % RING_BLOCKS` is set when counter
    /// `c` (within the window) has been accepted.
    bitmap: [u64; RING_BLOCKS],
}

impl ReplayWindow {
    /// An empty window: every counter below [`REJECT_AFTER_MESSAGES`] is
    /// acceptable.
    pub fn new() -> Self {
        Self {
            max: 0,
            bitmap: [0; RING_BLOCKS],
        }
    }

    /// Whether `counter` would be accepted now. Does not record it: call this
    /// before authenticating the packet, then [`update`](Self::update) after.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::CounterLimit);
        }
        // No overflow: counter < REJECT_AFTER_MESSAGES = u64::MAX - 8192.
        if counter + WINDOW <= self.max {
            return Err(ReplayError::TooOld);
        }
        if counter > self.max {
            return Ok(());
        }
        let (block, bit) = Self::position(counter);
        if self.bitmap[block] & bit != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as received, sliding the window when it is the new
    /// greatest. Checks again first, since another packet with the same
    /// counter may have been accepted between [`check`](Self::check) and now.
    pub fn update(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if counter > self.max {
            let current = self.max / BLOCK_BITS;
            let target = counter / BLOCK_BITS;
            // Clear the blocks the window slides over; a jump of a whole ring
            // or more clears every block once (RFC 6479 §2.3).
            let slide = (target - current).min(RING_BLOCKS as u64);
            for i in 1..=slide {
                let block = ((current + i) % RING_BLOCKS as u64) as usize;
                self.bitmap[block] = 0;
            }
            self.max = counter;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= bit;
        Ok(())
    }

    /// The greatest counter accepted so far (0 when none has been).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Block index in the ring and bit mask within it for `counter`.
    fn position(counter: u64) -> (usize, u64) {
        let block = ((counter / BLOCK_BITS) % RING_BLOCKS as u64) as usize;
        (block, 1u64 << (counter % BLOCK_BITS))
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bitmap is 1 KiB of noise in logs; the greatest counter says
        // where the window is.
        f.debug_struct("ReplayWindow")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a scenario: what to feed and what must come back.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// `update(counter)` must give this result.
        Update(u64, Result<(), ReplayError>),
        /// `check(counter)` must give this result (and not change anything).
        Check(u64, Result<(), ReplayError>),
    }
    use Step::{Check, Update};

    const OK: Result<(), ReplayError> = Ok(());
    const DUP: Result<(), ReplayError> = Err(ReplayError::Duplicate);
    const OLD: Result<(), ReplayError> = Err(ReplayError::TooOld);
    const LIMIT: Result<(), ReplayError> = Err(ReplayError::CounterLimit);

    fn run(name: &str, steps: &[Step]) {
        let mut w = ReplayWindow::new();
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Update(c, want) => {
                    let checked = w.check(c);
                    assert_eq!(checked, want, "{name} step {i}: check({c}) before update");
                    assert_eq!(w.update(c), want, "{name} step {i}: update({c})");
                }
                Check(c, want) => {
                    let before = w.clone();
                    assert_eq!(w.check(c), want, "{name} step {i}: check({c})");
                    assert_eq!(before.max, w.max, "{name} step {i}: check mutated max");
                    assert_eq!(
                        before.bitmap, w.bitmap,
                        "{name} step {i}: check mutated bitmap"
                    );
                }
            }
        }
    }

    #[test]
    fn scenarios() {
        let far = 1_000_000u64;
        let cases: &[(&str, &[Step])] = &[
            ("first packet is 0", &[Update(0, OK), Update(0, DUP)]),
            (
                "first packet is not 0",
                &[Update(5, OK), Update(0, OK), Update(4, OK), Update(5, DUP)],
            ),
            (
                "in order",
                &[
                    Update(0, OK),
                    Update(1, OK),
                    Update(2, OK),
                    Update(3, OK),
                    Update(2, DUP),
                ],
            ),
            (
                "window edges",
                &[
                    Update(10_000, OK),
                    // max - WINDOW + 1 is the oldest tracked counter.
                    Check(10_000 - WINDOW + 1, OK),
                    Update(10_000 - WINDOW + 1, OK),
                    Update(10_000 - WINDOW + 1, DUP),
                    // max - WINDOW is just outside.
                    Check(10_000 - WINDOW, OLD),
                    Update(10_000 - WINDOW, OLD),
                    Update(0, OLD),
                ],
            ),
            (
                "reordering within the window",
                &[
                    Update(100, OK),
                    Update(98, OK),
                    Update(99, OK),
                    Update(97, OK),
                    Update(101, OK),
                    Update(64, OK),
                    Update(63, OK),
                    Update(98, DUP),
                    Update(63, DUP),
                    Update(0, OK),
                ],
            ),
            (
                "far jump clears old bits and keeps duplicates rejected",
                &[
                    Update(1, OK),
                    Update(2, OK),
                    Update(2, DUP),
                    Update(far, OK),
                    // Everything from before the jump is now too old.
                    Update(1, OLD),
                    Update(2, OLD),
                    Update(far, DUP),
                    // Counters that alias old bits in the ring were cleared.
                    Update(far - 1, OK),
                    Update(far - WINDOW + 1, OK),
                    Update(far - WINDOW + 1, DUP),
                    Update(far + 1, OK),
                    Update(far + 1, DUP),
                    Update(far - 1, DUP),
                ],
            ),
            (
                "jump of exactly one ring aliases every block",
                &[
                    Update(5, OK),
                    Update(5 + 8192, OK),
                    // Same ring slot as 5, must be clear after the slide.
                    Check(5 + 8192 - 64, OK),
                    Update(5 + 8192 - 64, OK),
                    Update(5 + 8192, DUP),
                ],
            ),
            (
                "small jump within the ring",
                &[
                    Update(0, OK),
                    Update(70, OK),
                    Update(200, OK),
                    Update(0, DUP),
                    Update(70, DUP),
                    Update(130, OK),
                    Update(200, DUP),
                ],
            ),
            (
                "counter limit",
                &[
                    Check(REJECT_AFTER_MESSAGES, LIMIT),
                    Check(u64::MAX, LIMIT),
                    Update(REJECT_AFTER_MESSAGES - 1, OK),
                    Update(REJECT_AFTER_MESSAGES - 1, DUP),
                    Update(REJECT_AFTER_MESSAGES, LIMIT),
                    Update(u64::MAX, LIMIT),
                    Update(REJECT_AFTER_MESSAGES - 2, OK),
                    Update(REJECT_AFTER_MESSAGES - 1 - WINDOW, OLD),
                ],
            ),
        ];
        for (name, steps) in cases {
            run(name, steps);
        }
    }

    /// Every counter in a sliding sequence is accepted exactly once, for
    /// reordering up to the full window.
    #[test]
    fn reordering_up_to_window_is_tolerated() {
        let mut w = ReplayWindow::new();
        // Deliver 0..N in blocks reversed, each block WINDOW long.
        let n = 4 * WINDOW;
        for block in 0..(n / WINDOW) {
            let start = block * WINDOW;
            for c in (start..start + WINDOW).rev() {
                assert_eq!(w.update(c), Ok(()), "counter {c}");
            }
        }
        for c in (n - WINDOW)..n {
            assert_eq!(w.check(c), Err(ReplayError::Duplicate), "counter {c}");
        }
    }
}
