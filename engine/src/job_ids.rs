//! Job ids: UUID v7s, strictly increasing across the whole process, made
//! with one atomic compare-and-swap.
//!
//! `Uuid::now_v7` reads the clock, takes a lock-free shared context and
//! draws random bytes for every id: about 2,700 instructions, paid by every
//! job on the submit path. Here the caller passes the millisecond it read
//! once for its whole submission, and the id is that millisecond, a 16-bit
//! sequence within it (carried into the next millisecond if it ever runs
//! out: the ids stay increasing and unique, a little ahead of the clock),
//! and a 58-bit tail mixed from the two with a random per-process salt.
//! Ordered by creation as RFC 9562's method 1 keeps them; unique within
//! the process by construction and across processes by the salt.
//!
//! Because the order is one process-wide sequence, an id also tells *when*
//! it was made relative to anything else that took a [`stamp`], and the
//! tail tells whether this process made it at all ([`stamp_of`]): the
//! `wasm` backend uses both to skip a second schema check (see
//! `backends::wasm`).

use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;
use work_host_api::JobId;

/// The last stamp handed out: `millisecond << 16 | sequence`.
static LAST: AtomicU64 = AtomicU64::new(0);

/// The tail's bits: rand_b's 62 less the four that carry the sequence's
/// low bits.
const TAIL_MASK: u64 = (1 << 58) - 1;

/// A new id made at `unix_ms` (milliseconds since the Unix epoch), greater
/// than every id and stamp made before it in this process.
pub(crate) fn next(unix_ms: u64) -> JobId {
    id_of(take(unix_ms))
}

/// A point in the sequence of ids: every id made after this call is
/// greater than it (`stamp_of(id) > stamp`), and everything this thread
/// did before the call happens-before the code that made such an id.
pub(crate) fn stamp() -> u64 {
    // No clock: one past the last stamp is all it needs to be.
    take(0)
}

/// The stamp `id` was made with, if this process made it with [`next`]
/// (else `None`: an id from a caller, another process or an earlier run).
pub(crate) fn stamp_of(id: JobId) -> Option<u64> {
    let bits = id.as_u128();
    let millis = (bits >> 80) as u64;
    let version = (bits >> 76) & 0xF;
    let sequence = ((bits >> 64) & 0xFFF) << 4 | ((bits >> 58) & 0xF);
    let stamp = millis << 16 | sequence as u64;
    (version == 7 && (bits as u64) & TAIL_MASK == tail(stamp)).then_some(stamp)
}

/// Takes the next stamp: `unix_ms`'s first one, or one past the last one
/// taken if that is later.
fn take(unix_ms: u64) -> u64 {
    // 48 bits of milliseconds last until the year 10889.
    let floor = (unix_ms & ((1 << 48) - 1)) << 16;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        // Acquire and release: one stamp's taker sees what earlier takers
        // did before theirs (the stamps form one release sequence).
        let next = floor.max(last.wrapping_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(current) => last = current,
        }
    }
}

/// The UUID v7 of `stamp`: 48 bits of milliseconds, the version, the
/// sequence's high 12 bits as `rand_a`, the variant, its low 4 bits, then
/// the tail.
fn id_of(stamp: u64) -> JobId {
    let millis = u128::from(stamp >> 16);
    let sequence = u128::from(stamp & 0xFFFF);
    Uuid::from_u128(
        millis << 80
            | 0x7 << 76
            | (sequence >> 4) << 64
            | 0b10 << 62
            | (sequence & 0xF) << 58
            | u128::from(tail(stamp)),
    )
}

/// 58 bits that look random, from the stamp and the process's salt.
fn tail(stamp: u64) -> u64 {
    static SALT: OnceLock<[u64; 2]> = OnceLock::new();
    let [a, b] = *SALT.get_or_init(|| {
        // std seeds each `RandomState` from the OS's random source.
        let random = std::collections::hash_map::RandomState::new();
        [random.hash_one(1u8), random.hash_one(2u8)]
    });
    crate::id_map::folded_multiply(stamp ^ b, a) & TAIL_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_their_millisecond_and_version() {
        let ms = 1_763_900_000_000;
        let ids: Vec<JobId> = (0..70_000).map(|_| next(ms)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        let first = ids[0];
        assert_eq!(first.get_version_num(), 7);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = first.get_timestamp().unwrap().to_unix();
        assert!(secs >= ms / 1000, "{secs}");
        // More than 65,536 in one millisecond: carried into the next.
        let (last_secs, _) = ids[69_999].get_timestamp().unwrap().to_unix();
        assert!(last_secs >= secs);
    }

    #[test]
    fn a_clock_that_goes_back_still_gives_greater_ids() {
        let first = next(1_763_900_000_000);
        let clock_went_back = next(1_763_800_000_000);
        assert!(clock_went_back > first);
    }

    #[test]
    fn stamps_order_with_ids_and_only_our_ids_have_one() {
        let id = next(1_763_900_000_000);
        let stamp = stamp();
        let after = next(0);
        let mine = stamp_of(id).unwrap();
        assert!(mine < stamp);
        assert!(stamp_of(after).unwrap() > stamp);
        assert_eq!(stamp_of(Uuid::now_v7()), None);
        assert_eq!(stamp_of(Uuid::nil()), None);
        // A tail changed by one bit is not ours.
        assert_eq!(stamp_of(Uuid::from_u128(id.as_u128() ^ 1)), None);
    }
}
