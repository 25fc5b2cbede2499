//! A memory-bounded cache for events and state maps.
//!
//! Two generations: lookups read the young one, then the old one (a hit there moves the
//! entry to the young one); when the young generation's weight reaches half the budget it
//! becomes the old one and the previous old one is dropped. So the cache never holds more
//! than its budget (plus one entry), keeps what was used recently, and costs one hash map
//! operation or two per call, with no per-entry bookkeeping. Weights are estimates of heap
//! bytes, so the budget bounds memory whatever the size of the entries: a count bound
//! would let 2,000 state maps of a 10,000-member room take gigabytes.

use crate::hash::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

pub(crate) struct BoundedCache<K, V> {
    inner: Mutex<Generations<K, V>>,
    budget: usize,
    weigh: fn(&V) -> usize,
}

struct Generations<K, V> {
    young: HashMap<K, V>,
    young_weight: usize,
    old: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache holding at most about `budget` (in the units of `weigh`, bytes).
    pub(crate) fn new(budget: usize, weigh: fn(&V) -> usize) -> Self {
        Self {
            inner: Mutex::new(Generations { young: HashMap::default(), young_weight: 0, old: HashMap::default() }),
            budget: budget.max(2),
            weigh,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        if let Some(value) = inner.young.get(key) {
            return Some(value.clone());
        }
        let (key, value) = inner.old.remove_entry(key)?;
        self.put(&mut inner, key, value.clone());
        Some(value)
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let mut inner = self.lock();
        inner.old.remove(&key);
        self.put(&mut inner, key, value);
    }

    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        if let Some(value) = inner.young.remove(key) {
            inner.young_weight = inner.young_weight.saturating_sub((self.weigh)(&value));
        }
        inner.old.remove(key);
    }

    fn put(&self, inner: &mut Generations<K, V>, key: K, value: V) {
        let weight = (self.weigh)(&value);
        if inner.young_weight + weight > self.budget / 2 && !inner.young.is_empty() {
            inner.old = std::mem::take(&mut inner.young);
            inner.young_weight = 0;
        }
        if let Some(previous) = inner.young.insert(key, value) {
            inner.young_weight = inner.young_weight.saturating_sub((self.weigh)(&previous));
        }
        inner.young_weight += weight;
    }

    #[cfg(test)]
    fn weight(&self) -> usize {
        let inner = self.lock();
        inner.young_weight + inner.old.values().map(self.weigh).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(v: &String) -> usize {
        v.len()
    }

    #[test]
    fn stays_within_its_budget_and_keeps_what_is_used() {
        let cache: BoundedCache<u32, String> = BoundedCache::new(100, len);
        cache.insert(0, "x".repeat(10));
        for i in 1..1000 {
            cache.insert(i, "y".repeat(10));
            assert!(cache.weight() <= 100, "weight {} after {i} inserts", cache.weight());
            // Entry 0 is read all the time, so it survives every generation change.
            assert_eq!(cache.get(&0).as_deref(), Some("xxxxxxxxxx"));
        }
        assert_eq!(cache.get(&1), None, "an entry not used for long is gone");
        assert!(cache.get(&999).is_some());
    }

    #[test]
    fn replacing_and_removing_keep_the_weight_right() {
        let cache: BoundedCache<u32, String> = BoundedCache::new(1000, len);
        cache.insert(1, "a".repeat(300));
        cache.insert(1, "b".repeat(10));
        assert_eq!(cache.weight(), 10);
        cache.remove(&1);
        assert_eq!(cache.weight(), 0);
        assert_eq!(cache.get(&1), None);
        // An entry larger than the budget is kept until the next insert pushes it out.
        cache.insert(2, "c".repeat(5000));
        assert!(cache.get(&2).is_some());
        cache.insert(3, "d".repeat(10));
        assert_eq!(cache.get(&3).as_deref(), Some("dddddddddd"));
    }
}
