//! The in-process state backend: a sharded map with per-entry deadlines, swept periodically.
//! Each operation holds one shard lock for its key only, which makes it atomic the way the
//! corresponding Redis command is.

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use subtle::ConstantTimeEq as _;

use super::{CodeRecord, Consume};
use crate::clock::Clock;
use tracked::Tracked;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Bytes(Vec<u8>),
    Counter(u64),
    Code(CodeRecord),
}

#[derive(Debug)]
pub(super) struct Entry {
    value: Value,
    deadline_ms: u64,
}

/// The map behind a counter of changes. Its fields are private to this module, so every
/// operation (also ones added later) reaches the map through `write`, which counts, and the
/// saver learns of every change without each operation having to remember to say so.
mod tracked {
    use std::sync::atomic::{AtomicU64, Ordering};

    use dashmap::DashMap;
    use dashmap::mapref::entry::Entry as MapEntry;

    use super::Entry;

    #[derive(Debug, Default)]
    pub(super) struct Tracked {
        map: DashMap<String, Entry>,
        changes: AtomicU64,
    }

    impl Tracked {
        /// Runs `f` on the entry of `key` under its shard's write lock, then counts a change.
        /// Counting after the change, never before, is what lets a saver that reads the count
        /// before copying the map be sure the copy holds everything up to that count.
        pub(super) fn write<R>(
            &self,
            key: &str,
            f: impl FnOnce(MapEntry<'_, String, Entry>) -> R,
        ) -> R {
            let r = f(self.map.entry(key.to_owned()));
            self.changes.fetch_add(1, Ordering::SeqCst);
            r
        }

        /// Runs `f` on the entry of `key`, if any, under its shard's read lock.
        pub(super) fn read<R>(&self, key: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
            self.map.get(key).map(|e| f(&e))
        }

        /// Removes `key`.
        pub(super) fn remove(&self, key: &str) {
            self.map.remove(key);
            self.changes.fetch_add(1, Ordering::SeqCst);
        }

        /// Drops entries past their deadline. Not a change: a save leaves them out anyway.
        pub(super) fn drop_expired(&self, key: Option<&str>, now: u64) {
            match key {
                Some(k) => drop(self.map.remove_if(k, |_, e| e.deadline_ms <= now)),
                None => self.map.retain(|_, e| e.deadline_ms > now),
            }
        }

        /// Puts back a saved entry at start. Not a change: the file already holds it.
        pub(super) fn restore(&self, key: String, entry: Entry) {
            self.map.insert(key, entry);
        }

        /// `f` of every entry, one shard read lock at a time.
        pub(super) fn collect<R>(&self, mut f: impl FnMut(&str, &Entry) -> Option<R>) -> Vec<R> {
            self.map
                .iter()
                .filter_map(|e| f(e.key(), e.value()))
                .collect()
        }

        /// How many writes there have been.
        pub(super) fn changes(&self) -> u64 {
            self.changes.load(Ordering::SeqCst)
        }

        pub(super) fn len(&self) -> usize {
            self.map.len()
        }
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryState {
    map: Tracked,
    clock: Arc<dyn Clock>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryState {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            map: Tracked::default(),
            clock,
        }
    }

    fn now(&self) -> u64 {
        ms(self.clock.now())
    }

    /// `f` of the value under `key` while it lives; an expired entry is dropped on the way.
    fn live<R>(&self, key: &str, f: impl FnOnce(&Value) -> R) -> Option<R> {
        let now = self.now();
        let found = self
            .map
            .read(key, |e| (e.deadline_ms > now).then(|| f(&e.value)))?;
        if found.is_none() {
            self.map.drop_expired(Some(key), now);
        }
        found
    }

    pub(super) fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> bool {
        let now = self.now();
        let entry = Entry {
            value: Value::Bytes(value.to_vec()),
            deadline_ms: now.saturating_add(ms(ttl)),
        };
        self.map.write(key, |e| match e {
            MapEntry::Occupied(mut o) if o.get().deadline_ms <= now => {
                o.insert(entry);
                true
            }
            MapEntry::Occupied(_) => false,
            MapEntry::Vacant(v) => {
                v.insert(entry);
                true
            }
        })
    }

    pub(super) fn swap(&self, key: &str, value: &[u8], ttl: Duration) -> Option<Vec<u8>> {
        let now = self.now();
        let new = Entry {
            value: Value::Bytes(value.to_vec()),
            deadline_ms: now.saturating_add(ms(ttl)),
        };
        let old = self.map.write(key, |e| match e {
            MapEntry::Occupied(mut o) => Some(o.insert(new)),
            MapEntry::Vacant(v) => {
                v.insert(new);
                None
            }
        });
        match old {
            Some(Entry {
                value: Value::Bytes(b),
                deadline_ms,
            }) if deadline_ms > now => Some(b),
            _ => None,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.live(key, |v| match v {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        })?
    }

    pub(super) fn delete(&self, key: &str) {
        self.map.remove(key);
    }

    pub(super) fn delete_prefixed(&self, prefix: &str) -> u64 {
        let keys = self.live_entries(|k, _, _| k.to_owned());
        let mut n = 0;
        for k in keys.iter().filter(|k| k.starts_with(prefix)) {
            self.delete(k);
            n += 1;
        }
        n
    }

    pub(super) fn hit(&self, key: &str, window: Duration) -> u64 {
        let now = self.now();
        self.map.write(key, |e| {
            let mut e = e.or_insert(Entry {
                value: Value::Counter(0),
                deadline_ms: 0,
            });
            if e.deadline_ms <= now || !matches!(e.value, Value::Counter(_)) {
                *e = Entry {
                    value: Value::Counter(0),
                    deadline_ms: now.saturating_add(ms(window)),
                };
            }
            match &mut e.value {
                Value::Counter(n) => {
                    *n += 1;
                    *n
                }
                _ => u64::MAX,
            }
        })
    }

    pub(super) fn count(&self, key: &str) -> u64 {
        self.live(key, |v| match v {
            Value::Counter(n) => *n,
            _ => 0,
        })
        .unwrap_or_default()
    }

    pub(super) fn put_code(
        &self,
        key: &str,
        record: CodeRecord,
        ttl: Duration,
        replace: bool,
    ) -> bool {
        let now = self.now();
        let entry = Entry {
            value: Value::Code(record),
            deadline_ms: now.saturating_add(ms(ttl)),
        };
        self.map.write(key, |e| match e {
            MapEntry::Occupied(o) if !replace && o.get().deadline_ms > now => false,
            MapEntry::Occupied(mut o) => {
                o.insert(entry);
                true
            }
            MapEntry::Vacant(v) => {
                v.insert(entry);
                true
            }
        })
    }

    pub(super) fn peek_code(&self, key: &str) -> Option<Vec<u8>> {
        self.live(key, |v| match v {
            Value::Code(r) => Some(r.payload.clone()),
            _ => None,
        })?
    }

    pub(super) fn consume_code(&self, key: &str, digest: &[u8; 32]) -> Consume {
        let now = self.now();
        self.map.write(key, |e| {
            let MapEntry::Occupied(mut o) = e else {
                return Consume::Missing;
            };
            if o.get().deadline_ms <= now {
                o.remove();
                return Consume::Missing;
            }
            let matched = match &o.get().value {
                Value::Code(rec) => bool::from(rec.digest.ct_eq(digest)),
                _ => return Consume::Missing,
            };
            if matched {
                return match o.remove().value {
                    Value::Code(r) => Consume::Accepted(r.payload),
                    _ => Consume::Missing,
                };
            }
            let left = match &mut o.get_mut().value {
                Value::Code(rec) => {
                    rec.attempts = rec.attempts.saturating_sub(1);
                    rec.attempts
                }
                _ => 0,
            };
            if left == 0 {
                o.remove();
            }
            Consume::Rejected { left }
        })
    }

    pub(super) fn sweep(&self) {
        self.map.drop_expired(None, self.now());
    }

    /// Now, by the injected clock, in Unix ms.
    pub(super) fn now_ms(&self) -> u64 {
        self.now()
    }

    /// How many writes there have been since start (the saver's "anything new?").
    pub(super) fn changes(&self) -> u64 {
        self.map.changes()
    }

    /// `f` of every live entry: key, value and deadline (Unix ms).
    pub(super) fn live_entries<R>(&self, mut f: impl FnMut(&str, &Value, u64) -> R) -> Vec<R> {
        let now = self.now();
        self.map
            .collect(|key, e| (e.deadline_ms > now).then(|| f(key, &e.value, e.deadline_ms)))
    }

    /// Puts back an entry saved before a restart with its original deadline; one already past
    /// it is left out. Returns whether it was restored.
    pub(super) fn restore(&self, key: String, value: Value, deadline_ms: u64) -> bool {
        if deadline_ms <= self.now() {
            return false;
        }
        self.map.restore(key, Entry { value, deadline_ms });
        true
    }

    /// Entries currently held (tests, metrics).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn store() -> (MemoryState, ManualClock) {
        let c = ManualClock::at(1_000);
        (MemoryState::new(Arc::new(c.clone())), c)
    }

    #[test]
    fn put_new_get_swap_and_expiry() {
        let (s, c) = store();
        assert!(s.put_new("k", b"a", Duration::from_secs(10)));
        assert!(!s.put_new("k", b"b", Duration::from_secs(10)));
        assert_eq!(s.get("k").as_deref(), Some(&b"a"[..]));
        assert_eq!(
            s.swap("k", b"c", Duration::from_secs(10)).as_deref(),
            Some(&b"a"[..])
        );
        c.advance(Duration::from_secs(11));
        assert_eq!(s.get("k"), None);
        assert!(
            s.put_new("k", b"d", Duration::from_secs(10)),
            "an expired key can be set again"
        );
        s.sweep();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn counters_use_fixed_windows() {
        let (s, c) = store();
        for i in 1..=3 {
            assert_eq!(s.hit("ip", Duration::from_secs(60)), i);
        }
        assert_eq!(s.count("ip"), 3);
        c.advance(Duration::from_secs(61));
        assert_eq!(s.count("ip"), 0);
        assert_eq!(s.hit("ip", Duration::from_secs(60)), 1);
    }

    #[test]
    fn codes_work_once_and_burn_after_the_attempts() {
        let (s, c) = store();
        let rec = CodeRecord {
            payload: b"p".to_vec(),
            digest: [7; 32],
            attempts: 3,
        };
        s.put_code("c", rec.clone(), Duration::from_secs(600), true);
        assert_eq!(s.consume_code("c", &[1; 32]), Consume::Rejected { left: 2 });
        assert_eq!(
            s.consume_code("c", &[7; 32]),
            Consume::Accepted(b"p".to_vec())
        );
        assert_eq!(
            s.consume_code("c", &[7; 32]),
            Consume::Missing,
            "single use"
        );
        s.put_code("c", rec.clone(), Duration::from_secs(600), true);
        for left in [2, 1, 0] {
            assert_eq!(s.consume_code("c", &[1; 32]), Consume::Rejected { left });
        }
        assert_eq!(s.consume_code("c", &[7; 32]), Consume::Missing, "burnt");
        s.put_code("c", rec, Duration::from_secs(600), true);
        c.advance(Duration::from_secs(601));
        assert_eq!(s.consume_code("c", &[7; 32]), Consume::Missing, "expired");
    }

    #[test]
    fn decoys_never_replace_a_pending_code() {
        let (s, _) = store();
        let real = CodeRecord {
            payload: b"real".to_vec(),
            digest: [1; 32],
            attempts: 5,
        };
        let decoy = CodeRecord {
            payload: b"decoy".to_vec(),
            digest: [2; 32],
            attempts: 5,
        };
        assert!(s.put_code("c", real, Duration::from_secs(60), true));
        assert!(!s.put_code("c", decoy.clone(), Duration::from_secs(60), false));
        assert_eq!(s.peek_code("c").as_deref(), Some(&b"real"[..]));
        assert!(s.put_code("d", decoy, Duration::from_secs(60), false));
    }

    #[test]
    fn concurrent_correct_submissions_succeed_once() {
        let (s, _) = store();
        let s = Arc::new(s);
        for round in 0..50 {
            let key = format!("c{round}");
            s.put_code(
                &key,
                CodeRecord {
                    payload: vec![1],
                    digest: [9; 32],
                    attempts: 5,
                },
                Duration::from_secs(600),
                true,
            );
            let accepted: usize = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let s = s.clone();
                        let key = key.clone();
                        scope.spawn(move || {
                            matches!(s.consume_code(&key, &[9; 32]), Consume::Accepted(_))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| usize::from(h.join().unwrap_or(false)))
                    .sum()
            });
            assert_eq!(accepted, 1, "round {round}");
        }
    }
}
