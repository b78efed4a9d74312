//! Cookies already opened: a bounded cache from a cookie's exact value to the claims it
//! authenticated to, so a browser sending the same cookie again skips the base64 decoding,
//! the AES-GCM open and the parsing (most of the session's cost on the protected route).
//!
//! Only what depends on the value and the keys alone is kept. Whatever depends on the time
//! (expiry, idle timeout, docs/security.md#30) or on revocations (docs/security.md#31) is
//! checked by the caller on every request, hit or miss. Only values that opened and were
//! accepted go in, so a tampered or foreign value never has an entry (docs/security.md#29).
//!
//! Each entry remembers the key ring that opened it: after a reload of the keys (a retired
//! key, a rotation) no entry of the old ring is used, and [`Opened::clear`] drops them.
//!
//! Layout: `SETS` sets of `WAYS` entries, each set behind its own mutex, so two requests
//! contend only when their cookies fall into the same set. A full set evicts in turn. The set
//! is chosen from the value's last 16 characters: in every value that can be inserted they
//! encode the AEAD tag, which nobody can choose without the key, so nobody can crowd one set
//! with their own entries. A hit compares the whole value, in constant time: a cached value is
//! a bearer credential, and a comparison that stopped at the first difference would tell a
//! guesser how much of it they had right.

use std::sync::{Arc, Mutex, Weak};

use subtle::ConstantTimeEq as _;

use super::Accepted;
use super::cookie::TokenKind;
use super::keys::KeyRing;

/// log2 of the number of sets.
const SET_BITS: u32 = 10;
const SETS: usize = 1 << SET_BITS;
/// Entries per set. At most `SETS * WAYS` (4096) entries in all: about 1.5 MB with cookies of
/// a usual size, under 8 MB with every value at `cookie::MAX_VALUE_LEN`.
const WAYS: usize = 4;
/// Characters of the value the set is chosen from (all inside the encoded tag).
const TAIL: usize = 16;

/// The cache of opened cookies.
pub(crate) struct Opened {
    sets: Box<[Mutex<Set>]>,
}

impl std::fmt::Debug for Opened {
    // Not the thousand sets: the cache is part of `Sessions`, which may be printed whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("sets", &self.sets.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Set {
    ways: [Option<Entry>; WAYS],
    /// The way the next insertion into a full set replaces.
    next: usize,
}

struct Entry {
    hash: u64,
    value: Box<str>,
    /// The ring that opened it. The weak reference keeps the ring's allocation from being
    /// reused, so an equal address means the same ring, never a later one at the same place.
    ring: Weak<KeyRing>,
    accepted: Accepted,
}

impl Default for Opened {
    fn default() -> Self {
        Self {
            sets: (0..SETS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Opened {
    /// What `value` opened to as `kind` for `app` under `ring`, if it did so before.
    pub(crate) fn get(
        &self,
        value: &str,
        kind: TokenKind,
        app: &str,
        ring: &Arc<KeyRing>,
    ) -> Option<Accepted> {
        let hash = hash(value)?;
        // A poisoned set is a miss: the value is opened the long way.
        let set = self.set(hash).lock().ok()?;
        set.ways.iter().flatten().find_map(|e| {
            let claims = &e.accepted.claims;
            let hit = e.hash == hash
                && std::ptr::eq(e.ring.as_ptr(), Arc::as_ptr(ring))
                && claims.kind == kind
                && claims.app == app
                && same(e.value.as_bytes(), value.as_bytes());
            hit.then(|| e.accepted.clone())
        })
    }

    /// Remembers that `value` opened to `accepted` under `ring`. Call it only for a value that
    /// opened and was accepted.
    pub(crate) fn insert(&self, value: &str, ring: &Arc<KeyRing>, accepted: &Accepted) {
        let Some(hash) = hash(value) else { return };
        let Ok(mut set) = self.set(hash).lock() else {
            return;
        };
        let ring_ptr = Arc::as_ptr(ring);
        // Another request may have put it in meanwhile; otherwise a free way, then one of an
        // old ring, then the next in turn.
        let free = set.ways.iter().position(|w| {
            w.as_ref().is_none_or(|e| {
                !std::ptr::eq(e.ring.as_ptr(), ring_ptr)
                    || (e.hash == hash && same(e.value.as_bytes(), value.as_bytes()))
            })
        });
        let way = free.unwrap_or_else(|| {
            let way = set.next % WAYS;
            set.next = (way + 1) % WAYS;
            way
        });
        if let Some(slot) = set.ways.get_mut(way) {
            *slot = Some(Entry {
                hash,
                value: value.into(),
                ring: Arc::downgrade(ring),
                accepted: accepted.clone(),
            });
        }
    }

    /// Drops every entry (the keys changed).
    pub(crate) fn clear(&self) {
        for set in &self.sets {
            if let Ok(mut set) = set.lock() {
                *set = Set::default();
            }
        }
    }

    /// How many entries are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sets
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.ways.iter().flatten().count())
            .sum()
    }

    fn set(&self, hash: u64) -> &Mutex<Set> {
        let i = usize::try_from(hash >> (u64::BITS - SET_BITS)).unwrap_or(0);
        &self.sets[i % SETS]
    }
}

/// A value's set hash, from its last [`TAIL`] bytes (`None` for values too short to be a
/// sealed value at all).
fn hash(value: &str) -> Option<u64> {
    let tail = value
        .len()
        .checked_sub(TAIL)
        .and_then(|i| value.as_bytes().get(i..))?;
    let (a, b) = tail.split_at(8);
    let a = u64::from_le_bytes(a.try_into().ok()?);
    let b = u64::from_le_bytes(b.try_into().ok()?);
    Some((a ^ b.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Whether `a` and `b` are equal, in a time that depends on their length only. The words are
/// folded without a branch on their contents; `subtle` makes the final decision.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u64;
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        diff |= u64::from(x ^ y);
    }
    for (x, y) in ac.zip(bc) {
        let (Ok(x), Ok(y)) = (<[u8; 8]>::try_from(x), <[u8; 8]>::try_from(y)) else {
            return false;
        };
        diff |= u64::from_ne_bytes(x) ^ u64::from_ne_bytes(y);
    }
    diff.ct_eq(&0).into()
}

#[cfg(test)]
mod tests;
