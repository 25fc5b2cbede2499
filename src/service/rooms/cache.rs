//! A memory-bounded cache for events and state maps, and the client-format renderings that
//! the /sync answers of one millisecond share.
//!
//! Two generations: lookups read the young one, then the old one (a hit there moves the
//! entry to the young one); when the young generation's weight reaches half the budget it
//! becomes the old one and the previous old one is dropped. So the cache never holds more
//! than its budget (plus one entry), keeps what was used recently, and costs one hash map
//! operation or two per call, with no per-entry bookkeeping. Weights are estimates of heap
//! bytes, so the budget bounds memory whatever the size of the entries: a count bound
//! would let 2,000 state maps of a 10,000-member room take gigabytes.

use crate::{error::Result, hash::HashMap};
use serde_json::value::RawValue;
use std::{collections::VecDeque, hash::Hash, sync::Arc, sync::Mutex};

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

/// The last few events rendered for /sync, each with the millisecond its `unsigned.age` was
/// computed for. When a message wakes every member's long-poll, the answers of one
/// millisecond carry the same bytes for it (only `age` depends on the time, and only the
/// sender's own session sees a `transaction_id`, which the caller leaves out of this):
/// rendered once, copied for the others. In the 1,000-client fan-out that rendering was
/// about 5% of a woken /sync's instructions.
///
/// An entry is found by the identity of the event's `Arc` (held, so the address cannot be
/// reused by another event while the entry lives): an event changed since (redacted, say)
/// is another `Arc`, so it never gets an old rendering.
pub(crate) struct Renderings<P> {
    slots: Mutex<VecDeque<(Arc<P>, u64, Arc<RawValue>)>>,
}

/// How many events' renderings are kept: a fan-out renders one event (or a few) at a time.
const RENDERINGS: usize = 8;

impl<P> Default for Renderings<P> {
    fn default() -> Self {
        Self { slots: Mutex::new(VecDeque::with_capacity(RENDERINGS)) }
    }
}

impl<P> Renderings<P> {
    /// `event` rendered for millisecond `at_ms`: a copy of the kept rendering, or `render`'s,
    /// which is then kept (replacing the event's rendering of an earlier millisecond).
    pub(crate) fn get_or_render(
        &self,
        event: &Arc<P>,
        at_ms: u64,
        render: impl FnOnce() -> Result<Box<RawValue>>,
    ) -> Result<Box<RawValue>> {
        let kept = self
            .lock()
            .iter()
            .find(|(kept, ms, _)| *ms == at_ms && Arc::ptr_eq(kept, event))
            .map(|(_, _, json)| json.clone());
        if let Some(json) = kept {
            return Ok((*json).to_owned());
        }
        let json = render()?;
        let shared: Arc<RawValue> = json.clone().into();
        let mut slots = self.lock();
        slots.retain(|(kept, ms, _)| !Arc::ptr_eq(kept, event) || *ms > at_ms);
        if !slots.iter().any(|(kept, _, _)| Arc::ptr_eq(kept, event)) {
            slots.push_front((event.clone(), at_ms, shared));
            slots.truncate(RENDERINGS);
        }
        Ok(json)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Arc<P>, u64, Arc<RawValue>)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
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

    fn rendered(text: &str) -> Result<Box<RawValue>> {
        Ok(RawValue::from_string(text.to_owned()).unwrap())
    }

    #[test]
    fn renderings_are_shared_within_a_millisecond_and_per_event() {
        let renderings: Renderings<String> = Renderings::default();
        let (a, b) = (Arc::new("a".to_owned()), Arc::new("b".to_owned()));
        let calls = std::cell::Cell::new(0);
        let render = |text: &str| {
            calls.set(calls.get() + 1);
            rendered(text)
        };
        assert_eq!(renderings.get_or_render(&a, 10, || render(r#"{"age":1}"#)).unwrap().get(), r#"{"age":1}"#);
        // Same event, same millisecond: the kept bytes, not rendered again.
        assert_eq!(renderings.get_or_render(&a, 10, || render("0")).unwrap().get(), r#"{"age":1}"#);
        assert_eq!(calls.get(), 1);
        // Another event, or an equal event in another `Arc` (a changed copy): rendered.
        assert_eq!(renderings.get_or_render(&b, 10, || render(r#""b""#)).unwrap().get(), r#""b""#);
        let a_changed = Arc::new("a".to_owned());
        assert_eq!(renderings.get_or_render(&a_changed, 10, || render(r#""a2""#)).unwrap().get(), r#""a2""#);
        assert_eq!(calls.get(), 3);
        // A later millisecond renders again and replaces the earlier one; a late caller for an
        // earlier millisecond still gets its own rendering without replacing the newer one.
        assert_eq!(renderings.get_or_render(&a, 11, || render(r#"{"age":2}"#)).unwrap().get(), r#"{"age":2}"#);
        assert_eq!(renderings.get_or_render(&a, 10, || render(r#"{"age":1}"#)).unwrap().get(), r#"{"age":1}"#);
        assert_eq!(renderings.get_or_render(&a, 11, || render("0")).unwrap().get(), r#"{"age":2}"#);
        assert_eq!(calls.get(), 5);
        assert_eq!(renderings.lock().iter().filter(|(kept, _, _)| Arc::ptr_eq(kept, &a)).count(), 1);
        // A failed rendering is returned and nothing is kept for it.
        let c = Arc::new("c".to_owned());
        assert!(renderings.get_or_render(&c, 10, || Err(crate::error::Error::internal("no"))).is_err());
        assert!(!renderings.lock().iter().any(|(kept, _, _)| Arc::ptr_eq(kept, &c)));
        // At most RENDERINGS events are kept, the newest first.
        let events: Vec<Arc<String>> = (0..RENDERINGS + 3).map(|i| Arc::new(i.to_string())).collect();
        for event in &events {
            renderings.get_or_render(event, 12, || rendered("1")).unwrap();
        }
        let slots = renderings.lock();
        assert_eq!(slots.len(), RENDERINGS);
        assert!(Arc::ptr_eq(&slots[0].0, events.last().unwrap()));
    }
}
