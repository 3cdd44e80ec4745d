//! A bounded map for the caches a replica keeps per connection (built
//! connectors, decoded records) and per tenant (hook configurations):
//! when full, it drops its least recently used sixteenth in one pass, so a
//! busy entry is never the one dropped to make room for a cold one, and
//! the pass (a selection over the entries' use stamps) runs once per
//! `capacity / 16` insertions, never on a lookup.

use std::collections::HashMap;
use std::hash::Hash;

/// The map. Not synchronized: its owner holds it under a lock.
pub struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    /// Counts uses: each lookup or insertion stamps its entry with the next
    /// value, so stamps are unique and order the entries by last use.
    tick: u64,
    capacity: usize,
}

impl<K: Eq + Hash, V> Lru<K, V> {
    /// An empty map keeping at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    fn stamp(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The entry for `key`, counted as a use.
    pub fn get(&mut self, key: &K) -> Option<&mut V> {
        let now = self.stamp();
        self.entries.get_mut(key).map(|(value, used)| {
            *used = now;
            value
        })
    }

    /// Inserts (or replaces) the entry for `key`, counted as a use; when a
    /// new key finds the map full, the least recently used sixteenth (at
    /// least one entry) is dropped first. Answers how many were dropped.
    pub fn insert(&mut self, key: K, value: V) -> usize {
        let dropped = if self.entries.contains_key(&key) {
            0
        } else {
            self.make_room()
        };
        let used = self.stamp();
        self.entries.insert(key, (value, used));
        dropped
    }

    fn make_room(&mut self) -> usize {
        if self.entries.len() < self.capacity {
            return 0;
        }
        let count = (self.entries.len() - self.capacity + 1)
            .max(self.capacity / 16)
            .min(self.entries.len());
        let mut stamps: Vec<u64> = self.entries.values().map(|(_, used)| *used).collect();
        // Stamps are unique, so exactly `count` entries are at or below the cut.
        let (_, cut, _) = stamps.select_nth_unstable(count - 1);
        let cut = *cut;
        self.entries.retain(|_, (_, used)| *used > cut);
        count
    }

    /// Removes the entry for `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(value, _)| value)
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most kept at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn a_full_map_drops_its_least_recently_used_sixteenth() {
        let mut lru = Lru::new(32);
        for n in 0..32 {
            assert_eq!(lru.insert(n, n), 0);
        }
        // 0..16 used again: 16 and 17 are now the least recently used.
        for n in 0..16 {
            assert_eq!(lru.get(&n), Some(&mut n.clone()));
        }
        assert_eq!(lru.insert(32, 32), 2, "32 / 16 = 2 dropped");
        assert_eq!(lru.len(), 31);
        assert!(lru.get(&16).is_none() && lru.get(&17).is_none());
        assert!((0..16).chain(18..33).all(|n| lru.get(&n).is_some()));
    }

    #[test]
    fn replacing_an_entry_drops_nothing() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 1);
        assert_eq!(lru.insert("a", 2), 0);
        assert_eq!(
            (lru.len(), lru.get(&"a").copied(), lru.get(&"b").copied()),
            (2, Some(2), Some(1))
        );
    }

    #[test]
    fn a_map_of_one_keeps_the_last_inserted() {
        let mut lru = Lru::new(0);
        assert_eq!(lru.capacity(), 1);
        lru.insert(1, ());
        assert_eq!(lru.insert(2, ()), 1);
        assert!(lru.get(&1).is_none() && lru.get(&2).is_some());
        assert_eq!(lru.remove(&2), Some(()));
        assert!(lru.is_empty());
    }
}
