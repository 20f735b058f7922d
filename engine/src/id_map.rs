//! The engine's hash maps: by job id without hashing again, by name with
//! foldhash instead of SipHash.
//!
//! Job ids are UUID v7s the engine generates itself: their last 62 bits
//! are random, so they are already a good hash, and no caller can choose
//! the keys that go *into* these maps (ids given by callers are only looked
//! up). Hashing them again with SipHash was a measurable share of the
//! scheduler's time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use work_host_api::JobId;

/// A map from a name callers choose (tenant, namespace, group, key):
/// foldhash with a per-map random seed is several times faster than
/// SipHash on short names and still not predictable from outside.
pub(crate) type NameMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A map from job id.
pub(crate) type IdMap<V> = HashMap<JobId, V, BuildHasherDefault<IdHasher>>;

/// Folds the bytes it is given into a `u64`; for a UUID that keeps the
/// random tail.
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
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, _length_prefix: usize) {}
}

/// The random bits of a job id, for picking a shard.
pub(crate) fn spread(id: &JobId) -> u64 {
    let bytes = id.as_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    u64::from_le_bytes(tail)
}
