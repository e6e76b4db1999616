//! A string-keyed map whose clones share their storage in shards. Writing to a clone copies
//! only the shard it touches, so the next route table or Drove view after a one-vhost change
//! costs a few hundred entries, not ten thousand; reads are one std `HashMap` lookup.

use std::collections::HashMap;
use std::sync::Arc;

/// Enough shards that one holds a few dozen entries at ten thousand vhosts, few enough
/// that cloning the shard list stays a couple of microseconds.
const SHARDS: usize = 256;

pub struct CowMap<V> {
    shards: Vec<Arc<HashMap<String, V>>>,
    len: usize,
}

impl<V> Clone for CowMap<V> {
    fn clone(&self) -> Self {
        CowMap { shards: self.shards.clone(), len: self.len }
    }
}

impl<V> Default for CowMap<V> {
    fn default() -> Self {
        CowMap { shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(), len: 0 }
    }
}

/// FNV-1a: cheap, and only picks a shard; each shard still hashes with `RandomState`.
fn shard_of(key: &str) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash as usize) % SHARDS
}

impl<V> CowMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Every entry, ordered by key (for listings and files that should not churn).
    pub fn sorted(&self) -> Vec<(&str, &V)> {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }
}

impl<V: Clone> CowMap<V> {
    /// The shard holding `key`, copied first if another clone still shares it.
    fn shard_mut(&mut self, key: &str) -> &mut HashMap<String, V> {
        Arc::make_mut(&mut self.shards[shard_of(key)])
    }

    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let old = self.shard_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        let old = self.shard_mut(key).remove(key);
        self.len -= usize::from(old.is_some());
        old
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        self.shard_mut(key).get_mut(key)
    }

    /// The value at `key`, inserted with `make` first if absent.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let shard = Arc::make_mut(&mut self.shards[shard_of(key)]);
        if !shard.contains_key(key) {
            self.len += 1;
        }
        shard.entry(key.to_string()).or_insert_with(make)
    }
}

impl<V: PartialEq> PartialEq for CowMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.shards.iter().zip(&other.shards).all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl<V: Eq> Eq for CowMap<V> {}

impl<V: std::fmt::Debug> std::fmt::Debug for CowMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.sorted()).finish()
    }
}

impl<V: Clone> FromIterator<(String, V)> for CowMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut map = CowMap::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_written() {
        let mut a: CowMap<u32> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
        let b = a.clone();
        assert_eq!(a, b);
        assert_eq!(a.insert("k1".into(), 7), Some(1));
        assert_eq!(a.remove("k2"), Some(2));
        assert_eq!(a.remove("k2"), None);
        *a.get_or_insert_with("new", || 5) += 1;
        *a.get_mut("k3").unwrap() = 33;
        assert_eq!((a.get("k1"), a.get("new"), a.get("k3"), a.len()), (Some(&7), Some(&6), Some(&33), 1000));
        assert_eq!((b.get("k1"), b.get("k2"), b.get("new"), b.len()), (Some(&1), Some(&2), None, 1000));
        assert_ne!(a, b);
        let shared = a.shards.iter().zip(&b.shards).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert!(shared >= SHARDS - 4, "only touched shards are copied ({shared} shared)");
        let keys: Vec<_> = b.sorted().into_iter().take(3).map(|(k, _)| k).collect();
        assert_eq!(keys, ["k0", "k1", "k10"]);
    }
}
