//! The hash maps and sets of the in-memory caches and indexes: std's `HashMap` and `HashSet`
//! hashed with foldhash instead of SipHash.
//!
//! A woken /sync looks up its user, room, events and state in a dozen caches; with SipHash,
//! hashing those ids was about a tenth of the instructions the server ran in the 1,000-client
//! fan-out (callgrind). foldhash hashes an id in a fraction of that. Each map is still seeded
//! from process-random state, as hashbrown's default (also foldhash) is, so keys chosen by
//! other users and servers cannot be aimed at one bucket from outside; foldhash makes no
//! cryptographic claim, which SipHash does not need here either.
//!
//! Build maps with `HashMap::default()` (`new` exists only for std's own hasher).

pub type RandomState = foldhash::fast::RandomState;
pub type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
pub type HashSet<T> = std::collections::HashSet<T, RandomState>;
