//! The engine's hash maps: by job id with one multiply per word instead of
//! SipHash, by name with foldhash.
//!
//! Job ids are UUID v7s the engine generates itself, so no caller can
//! choose the keys that go *into* these maps (ids given by callers are only
//! looked up), and a keyed hash buys nothing. But the ids are not random
//! where a hash table looks: both the engine's own (`job_ids`) and those of
//! `Uuid::now_v7` (older stores hold those) are ordered within a
//! millisecond by a counter, so the timestamp, the counter's high bits and
//! the variant bits change slowly; `now_v7`'s are random only in their
//! last four bytes. The low bits of any
//! plain fold of those bytes take a few dozen values over 100,000 ids, and
//! a hash table keyed on them probes long runs of full slots. Each word is
//! therefore mixed with a folded multiply, which carries every input bit
//! into the low bits (the `ids_spread_over_buckets_and_shards` test
//! checks it).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use work_host_api::JobId;

/// A map from a name callers choose (tenant, namespace, group, key):
/// foldhash with a per-map random seed is several times faster than
/// SipHash on short names and still not predictable from outside.
pub(crate) type NameMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A map from job id.
pub(crate) type IdMap<V> = HashMap<JobId, V, BuildHasherDefault<IdHasher>>;

/// An odd constant with its bits well mixed (from the fractional digits
/// of pi, as foldhash and wyhash use).
const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

/// The high and low halves of the 128-bit product, folded together: each
/// input bit reaches most output bits, the low ones included.
pub(crate) fn folded_multiply(x: u64, y: u64) -> u64 {
    let full = u128::from(x) * u128::from(y);
    (full as u64) ^ ((full >> 64) as u64)
}

/// Mixes each 8-byte word of what it is given into a `u64`.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = folded_multiply(self.0 ^ u64::from_le_bytes(word), MULTIPLIER);
        }
    }

    fn write_usize(&mut self, _length_prefix: usize) {}
}

/// A job id's hash in an [`IdMap`].
fn hash(id: &JobId) -> u64 {
    BuildHasherDefault::<IdHasher>::default().hash_one(id)
}

/// A job id's hash bits for picking a shard: the upper half of the map's
/// hash, so that the low bits a shard's table indexes by still vary among
/// the ids of one shard.
pub(crate) fn spread(id: &JobId) -> u64 {
    hash(id) >> 32
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Ids made within the same few milliseconds, as the engine makes them
    /// and as `Uuid::now_v7` does, land in every shard and, within a shard,
    /// start their probes at as many places as a random hash would.
    #[test]
    fn ids_spread_over_buckets_and_shards() {
        let ms = 1_763_900_000_000;
        check_spread((0..64_000).map(|_| crate::job_ids::next(ms)).collect());
        check_spread((0..64_000).map(|_| uuid::Uuid::now_v7()).collect());
    }

    fn check_spread(ids: Vec<JobId>) {
        const SHARDS: u64 = 32;
        let mut per_shard = [0usize; SHARDS as usize];
        let mut starts = HashSet::new();
        for id in &ids {
            let shard = spread(id) % SHARDS;
            per_shard[shard as usize] += 1;
            if shard == 0 {
                starts.insert(hash(id) & 0xfff);
            }
        }
        // 2,000 ids a shard on average.
        for count in per_shard {
            assert!((1_500..2_500).contains(&count), "{per_shard:?}");
        }
        // About 2,000 ids into 4,096 slots: a random hash starts ~1,600
        // distinct probes; the old fold started a few dozen.
        assert!(starts.len() > 1_200, "{} distinct starts", starts.len());
    }
}
