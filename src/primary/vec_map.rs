//! A small map kept as a `Vec` sorted by key: the primary's tables by worker id (the
//! workers themselves, and who holds each handle).
//!
//! Why not `BTreeMap`: a cluster has at most [`MAX_WORKERS`](super::MAX_WORKERS)
//! workers, so a binary search and a shift on insert cost nothing worth counting, while
//! each `BTreeMap` instantiation brought its own search, node splitting and merging and
//! iterators, inlined into every caller (about 37 KiB of the release binary), and its
//! iterator is a tree walk on every turn of the primary's loop. The order is the same
//! (by key), so everything that iterates sees what it saw before.

use std::fmt;

/// An ordered map on a sorted vector (see the module docs).
pub(crate) struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord + Copy, V> VecMap<K, V> {
    fn find(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    /// Inserts `value` under `key`; the value it replaces, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// The value under `key`, inserted as `V::default()` if there was none
    /// (`BTreeMap`'s `entry(key).or_default()`).
    pub(crate) fn or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(&key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key, V::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + '_ {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl DoubleEndedIterator<Item = &V> + '_ {
        self.entries.iter().map(|(_, v)| v)
    }

    pub(crate) fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + '_ {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;

    /// The same answers, in the same order, as a `BTreeMap` given the same calls.
    #[test]
    fn behaves_as_btree_map() {
        let mut m = VecMap::default();
        let mut b = std::collections::BTreeMap::new();
        let mut x: u32 = 12345;
        for _ in 0..5000 {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            let key = (x >> 16) % 64;
            match x % 5 {
                0 | 1 => assert_eq!(m.insert(key, x), b.insert(key, x)),
                2 => assert_eq!(m.remove(&key), b.remove(&key)),
                3 => *m.or_default(key) += 1,
                _ => {
                    if let (Some(a), Some(c)) = (m.get_mut(&key), b.get_mut(&key)) {
                        *a ^= 7;
                        *c ^= 7;
                    }
                }
            }
            if x % 5 == 3 {
                *b.entry(key).or_default() += 1;
            }
            assert_eq!(m.len(), b.len());
            assert_eq!(m.contains_key(&key), b.contains_key(&key));
            assert_eq!(m.get(&key), b.get(&key));
        }
        assert!(m.keys().eq(b.keys()));
        assert!(m.values().rev().eq(b.values().rev()));
        m.clear();
        assert!(m.is_empty());
    }
}
