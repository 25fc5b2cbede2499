//! The RocksDB backend: the only code that names `rocksdb`.
//!
//! Durability: every write is one WriteBatch written with the WAL on and, when
//! `sync_writes`, made durable by a WAL sync before it is acknowledged. No write asks
//! RocksDB for a synced write: the sync is the group commit's `flush_wal` (commit.rs),
//! which runs beside writers instead of inside RocksDB's write group, so a write never
//! waits behind another write's fsync. Concurrent writers share one sync.
//!
//! Stream positions are handed out from a counter, and a position becomes visible to
//! readers only when every smaller position is durable (see `Positions`), so a sync
//! reader never skips a change that was committed late.

mod appservice;
mod backup;
mod commit;
mod e2ee;
mod keys;
mod media;
mod outbox;
mod push;
mod read_cache;
mod schema;
mod stamps;
mod tails;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ::rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Direction as RDirection, Env, IteratorMode,
    MemtableFactory, Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions,
};
use ruma::{DeviceId, EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::{
    AppendEvent, DeviceRecord, Direction, MembershipRecord, MetaStore, ReceiptRecord, Result, RoomHead, RoomRecord,
    RoomStore, StateGroup, StateGroupId, StorageError, StoredEvent, StreamPos, StreamStore, TokenRecord, UnreadEntry,
    UserRecord, UserStore, WriteTicket, e2ee::DeviceListChange, push::PusherRecord,
};
use keys::{join, prefix, trailing_u64, u64_key, with_joined, with_u64};
use schema as cf;
use stamps::{Stamps, Stream};

/// Stream-position bookkeeping: allocation, in-flight set, visible watermark.
struct Positions {
    inner: Mutex<PositionsInner>,
    visible: watch::Sender<StreamPos>,
}

struct PositionsInner {
    next: StreamPos,
    in_flight: BTreeSet<StreamPos>,
}

impl Positions {
    fn new(last: StreamPos) -> Self {
        Self {
            inner: Mutex::new(PositionsInner { next: last + 1, in_flight: BTreeSet::new() }),
            visible: watch::channel(last).0,
        }
    }

    fn allocate(&self) -> StreamPos {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pos = inner.next;
        inner.next += 1;
        inner.in_flight.insert(pos);
        pos
    }

    /// Marks a position finished (written or failed) and advances the watermark.
    fn finish(&self, pos: StreamPos) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.in_flight.remove(&pos);
        let visible = match inner.in_flight.first() {
            Some(first) => first - 1,
            None => inner.next - 1,
        };
        drop(inner);
        self.visible.send_if_modified(|current| {
            if visible > *current {
                *current = visible;
                true
            } else {
                false
            }
        });
    }
}

pub struct RocksStorage {
    db: DB,
    /// WAL without sync (made durable by `commit`): every write uses it.
    pending_opts: WriteOptions,
    /// `pending_opts` that fail at once (`Incomplete`) instead of waiting when RocksDB
    /// holds writes back (too many memtables or level-0 files waiting for a flush or a
    /// compaction): for a write made on an async worker (see `try_append_event_pending`).
    no_stall_opts: WriteOptions,
    commit: commit::GroupCommit,
    positions: Arc<Positions>,
    /// Last change positions that let stream readers skip empty scans (see stamps.rs).
    stamps: Stamps,
    /// `rooms_of_user` answers (see read_cache.rs), weighed in room records.
    user_rooms: read_cache::ReadCache<OwnedUserId, Arc<Vec<(OwnedRoomId, MembershipRecord)>>>,
    /// A room's members with their membership (`members`): read for every event by the
    /// push evaluation; `room_members` is written only by an append carrying memberships.
    /// Shared: a 1,000-member list is handed to every message's push evaluation uncopied.
    room_members: read_cache::ReadCache<OwnedRoomId, Arc<Vec<(OwnedUserId, String)>>>,
    /// The newest timeline entries of rooms written since start (see tails.rs).
    tails: tails::Tails,
    /// A device's one-time key counts and unused fallback key types (key: `user SEP device`).
    device_keys: read_cache::ReadCache<Vec<u8>, e2ee::KeySummary>,
    /// Notification records after a user's read position in a room (key: `user SEP room`).
    unread: read_cache::ReadCache<Vec<u8>, read_cache::Unread>,
    /// Access and refresh tokens by hash (`token`): read by every authenticated request.
    /// Only tokens that exist are cached (an unknown token costs a read, not an entry), and
    /// every write that replaces or deletes a token drops its entry.
    tokens: read_cache::ReadCache<[u8; 32], TokenRecord>,
    /// A user's pushers (key: the user id's bytes): read for every member a message
    /// notifies; dropped by every write of the user's pushers.
    pushers: read_cache::ReadCache<Vec<u8>, Vec<PusherRecord>>,
    /// The users who have a pusher at all (few do): every other member a message notifies is
    /// answered without a lookup. Read from the table at open; kept by every pushers write.
    pusher_users: push::PusherUsers,
    next_state_group: AtomicU64,
    /// The next federation outbox sequence number (see outbox.rs).
    next_outbox_seq: AtomicU64,
    /// Serialises check-then-create operations (user ids, aliases, claiming one-time keys,
    /// device-list changes and their `prev`, to-device transaction ids).
    create_lock: Mutex<()>,
    /// Serialises read-then-write key backup operations per user (see backup.rs).
    backup_locks: backup::BackupLocks,
}

fn backend(e: ::rocksdb::Error) -> StorageError {
    StorageError::Backend(e.into_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records contain only strings, numbers and raw JSON: serialisation cannot fail.
    serde_json::to_vec(value).expect("storage records serialise to JSON")
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt { table, detail: e.to_string() })
}

fn decode_str(table: &'static str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| StorageError::Corrupt { table, detail: e.to_string() })
}

fn parse_id<T: TryFrom<String>>(table: &'static str, bytes: &[u8]) -> Result<T>
where
    T::Error: std::fmt::Display,
{
    T::try_from(decode_str(table, bytes)?).map_err(|e| StorageError::Corrupt { table, detail: e.to_string() })
}

/// Read options that keep an iterator inside the keys starting with `prefix`, so RocksDB
/// stops at the edge of the range instead of stepping over (or seeking through) the
/// neighbouring keys, which is what makes short reverse scans expensive.
pub(super) fn bounded(prefix: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(prefix.to_vec());
    // The smallest key above every key starting with the prefix: drop trailing 0xFF bytes
    // and increment the last one (no bound when the prefix is all 0xFF).
    let mut upper = prefix.to_vec();
    while upper.last() == Some(&0xFF) {
        upper.pop();
    }
    if let Some(last) = upper.last_mut() {
        *last += 1;
        opts.set_iterate_upper_bound(upper);
    }
    opts
}

impl RocksStorage {
    pub fn open(config: &crate::storage::StorageConfig) -> Result<Self> {
        let (path, sync_writes) = (config.path.as_path(), config.sync_writes);
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Backend(format!("cannot create {}: {e}", path.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        // Flushes and compactions run at the lowest CPU priority (nice 19): on a busy core
        // they fill the gaps between requests instead of taking scheduler slices of several
        // milliseconds from them (W1 send p99 on one core: 7.9-9.1 ms -> 6.6-6.9 ms). They still
        // get the CPU when requests wait on them: a write that a full memtable holds up frees
        // the core for the flush.
        let mut env = Env::new().map_err(backend)?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        opts.set_env(&env);
        opts.set_keep_log_file_num(4);
        // One budget for the memtables of every column family: without it each of the ~25
        // families may grow its own up to the default 64 MB before a flush.
        opts.set_db_write_buffer_size(config.write_buffer_bytes);
        // The hash memtables below take one writer at a time; on the one or two cores ieum
        // is sized for, a write group's leader inserting every batch costs nothing.
        opts.set_allow_concurrent_memtable_write(false);
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let descriptors = schema::ALL.iter().map(|name| {
            let mut cf_opts = Options::default();
            // A memtable's memory is allocated in arena blocks, 1 MiB by default: every family
            // written to at all would hold a block, ~25 MiB counted against the budget above,
            // and the budget then flushed memtables of a few entries (51 flushes, most of
            // them tiny, in the headline W1-W3 load).
            cf_opts.set_arena_block_size(ARENA_BLOCK);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_compression_type(::rocksdb::DBCompressionType::Lz4);
            if PER_USER_FAMILIES.contains(name) {
                per_user_memtable(&mut cf_opts);
            }
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, descriptors).map_err(backend)?;
        let pending_opts = WriteOptions::default();
        let mut no_stall_opts = WriteOptions::default();
        no_stall_opts.set_no_slowdown(true);

        // A new database starts its stream high, so history fetched later from other servers
        // can take timeline keys below a room's first event (see `insert_backfilled`).
        let last_pos = Self::last_key_u64(&db, cf::STREAM)?.unwrap_or(FIRST_STREAM_POS - 1);
        let last_group = Self::last_key_u64(&db, cf::STATE_GROUPS)?.unwrap_or(0);
        let last_outbox_seq = outbox::last_outbox_seq(&db)?;
        let pusher_users = push::PusherUsers::load(&db)?;
        Ok(Self {
            db,
            pending_opts,
            no_stall_opts,
            commit: commit::GroupCommit::new(sync_writes),
            positions: Arc::new(Positions::new(last_pos)),
            stamps: Stamps::new(last_pos),
            user_rooms: read_cache::ReadCache::new(200_000, |list| list.len()),
            room_members: read_cache::ReadCache::new(500_000, |list| list.len()),
            tails: tails::Tails::default(),
            device_keys: read_cache::ReadCache::new(200_000, |(counts, types)| counts.len() + types.len()),
            unread: read_cache::ReadCache::new(200_000, |(_, records)| records.len()),
            tokens: read_cache::ReadCache::new(100_000, |_| 0),
            pushers: read_cache::ReadCache::new(100_000, Vec::len),
            pusher_users,
            next_state_group: AtomicU64::new(last_group + 1),
            next_outbox_seq: AtomicU64::new(last_outbox_seq + 1),
            create_lock: Mutex::new(()),
            backup_locks: backup::BackupLocks::default(),
        })
    }

    fn last_key_u64(db: &DB, name: &str) -> Result<Option<u64>> {
        let handle = db.cf_handle(name).expect("column family listed in schema");
        match db.iterator_cf(handle, IteratorMode::End).next() {
            Some(item) => {
                let (key, _) = item.map_err(backend)?;
                Ok(trailing_u64(&key))
            }
            None => Ok(None),
        }
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family listed in schema")
    }

    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(table), key).map_err(backend)
    }

    fn get_json<T: DeserializeOwned>(&self, table: &'static str, key: &[u8]) -> Result<Option<T>> {
        match self.get(table, key)? {
            Some(bytes) => decode(table, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a batch, durable when it returns (a pending write and a wait for its sync).
    fn write(&self, batch: WriteBatch) -> Result<()> {
        let ticket = self.write_pending(batch)?;
        self.wait_durable(ticket)
    }

    /// Writes a batch that occupies a fresh stream position; the position becomes
    /// visible once it (and every earlier one) is durable.
    fn write_at_new_pos(&self, kind: u8, build: impl FnOnce(&mut WriteBatch, StreamPos)) -> Result<StreamPos> {
        self.write_prepared_at_new_pos(kind, WriteBatch::default(), build, |_| {})
    }

    /// `write_at_new_pos` for a batch that already holds the writes that need no position.
    /// `written` runs once the batch is in RocksDB and before the position can become
    /// visible: the place to update in-memory caches a stream reader trusts.
    fn write_prepared_at_new_pos(
        &self,
        kind: u8,
        mut batch: WriteBatch,
        build: impl FnOnce(&mut WriteBatch, StreamPos),
        written: impl FnOnce(StreamPos),
    ) -> Result<StreamPos> {
        let pos = self.positions.allocate();
        batch.put_cf(self.cf(cf::STREAM), u64_key(pos), [kind]);
        build(&mut batch, pos);
        let result = self.write(batch);
        if result.is_ok() {
            written(pos);
        }
        self.positions.finish(pos);
        result.map(|()| pos)
    }

    /// An append written (pending): its caches are brought up to date before the position
    /// is handed to the group commit, after which another thread's sync can make it visible.
    fn appended(&self, pos: StreamPos, caches: &AppendCaches) -> (StreamPos, WriteTicket) {
        caches.apply(self, pos);
        (pos, self.commit.written(&self.positions, Some(pos)))
    }

    /// Writes a batch without syncing the WAL and without a stream position: durable once a
    /// `wait_durable` covers its ticket.
    fn write_pending(&self, batch: WriteBatch) -> Result<WriteTicket> {
        self.db.write_opt(batch, &self.pending_opts).map_err(backend)?;
        Ok(self.commit.written(&self.positions, None))
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: &'static str, prefix: &[u8]) -> Result<Vec<(Box<[u8]>, Box<[u8]>)>> {
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf_opt(self.cf(table), bounded(prefix), IteratorMode::From(prefix, RDirection::Forward));
        for item in iter {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key, value));
        }
        Ok(out)
    }

    fn decode_timeline_entry(key: &[u8], value: &[u8]) -> Result<(StreamPos, OwnedEventId, StateGroupId)> {
        let pos = trailing_u64(key).ok_or(StorageError::Corrupt { table: cf::TIMELINE, detail: "short key".into() })?;
        if value.len() < 8 {
            return Err(StorageError::Corrupt { table: cf::TIMELINE, detail: "short value".into() });
        }
        let group = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
        let event_id = parse_id(cf::TIMELINE, &value[8..])?;
        Ok((pos, event_id, group))
    }
}

/// Bytes of each arena block a memtable allocates.
const ARENA_BLOCK: usize = 64 * 1024;

/// The families whose memtable is hashed by user (see `per_user_memtable`): the records a
/// message writes for each member it notifies, unread (`user SEP room SEP pos`) and for
/// /notifications (`user SEP inverted pos`), both read only forwards within one user.
const PER_USER_FAMILIES: [&str; 2] = [cf::PUSH_ROOM_NOTIFS, cf::PUSH_USER_NOTIFS_NEWEST];

/// A message to a room of 1,000 writes 2,000 such records. In the default memtable (one
/// skiplist of every key) each insert searches past keys of every other member, with long
/// shared prefixes; here the memtable is hashed by user and each user's keys form a small
/// skiplist of their own. The prefix extractor also gives the tables prefix bloom filters.
/// Reads must seek forwards within one user's prefix, which is what a prefix extractor allows
/// without `total_order_seek`: RocksDB's hashed memtable has no SeekToLast, so a backwards
/// seek past the end of a user's keys would miss the memtable's records.
fn per_user_memtable(cf_opts: &mut Options) {
    cf_opts.set_prefix_extractor(SliceTransform::create("ieum.user_prefix", user_prefix, Some(has_user_prefix)));
    // Buckets live in the memtable's arena (8 bytes each): 16K cost 128 KiB per memtable and
    // keep collisions rare up to a few tens of thousands of notified users between flushes.
    cf_opts.set_memtable_factory(MemtableFactory::HashSkipList {
        bucket_count: 16_384,
        height: 4,
        branching_factor: 4,
    });
}

/// A key's `user SEP` prefix (the whole key when it has no separator).
fn user_prefix(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == keys::SEP) {
        Some(at) => &key[..=at],
        None => key,
    }
}

fn has_user_prefix(key: &[u8]) -> bool {
    key.contains(&keys::SEP)
}

/// The first stream position of a new database.
const FIRST_STREAM_POS: StreamPos = 1 << 32;

const KIND_EVENT: u8 = 1;
const KIND_ACCOUNT_DATA: u8 = 2;
pub(super) const KIND_RECEIPT: u8 = 3;
const KIND_DEVICE_LIST: u8 = 4;
pub(super) const KIND_TO_DEVICE: u8 = 5;

impl UserStore for RocksStorage {
    fn user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        self.get_json(cf::USERS, user_id.as_bytes())
    }

    fn create_user(&self, user: &UserRecord) -> Result<bool> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.get(cf::USERS, user.user_id.as_bytes())?.is_some() {
            return Ok(false);
        }
        self.put_user(user)?;
        Ok(true)
    }

    fn put_user(&self, user: &UserRecord) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::USERS), user.user_id.as_bytes(), encode(user));
        self.write(batch)
    }

    fn count_users(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(cf::USERS), IteratorMode::Start) {
            item.map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        let generation = match self.tokens.get(hash) {
            Ok(record) => return Ok(Some(record)),
            Err(generation) => generation,
        };
        let record = self.get_json::<TokenRecord>(cf::TOKENS, hash)?;
        if let Some(record) = &record {
            self.tokens.store(*hash, generation, record);
        }
        Ok(record)
    }

    fn put_device_with_tokens(
        &self,
        user_id: &UserId,
        device: &DeviceRecord,
        access: &TokenRecord,
        refresh: Option<&TokenRecord>,
    ) -> Result<()> {
        let key = join(&[user_id.as_bytes(), device.device_id.as_bytes()]);
        let mut batch = WriteBatch::default();
        let mut hashes = vec![device.token_hash];
        let old = self.get_json::<DeviceRecord>(cf::DEVICES, &key)?;
        // A new device's inbox is empty up to here: to-device messages are queued only for
        // existing devices, and a device's deletion takes its inbox with it.
        let empty_upto = old.is_none().then(|| self.current_pos());
        if let Some(old) = old {
            batch.delete_cf(self.cf(cf::TOKENS), old.token_hash);
            hashes.push(old.token_hash);
            if let Some(hash) = old.refresh_hash {
                batch.delete_cf(self.cf(cf::TOKENS), hash);
                hashes.push(hash);
            }
        }
        batch.put_cf(self.cf(cf::DEVICES), &key, encode(device));
        batch.put_cf(self.cf(cf::TOKENS), device.token_hash, encode(access));
        if let (Some(hash), Some(record)) = (device.refresh_hash, refresh) {
            batch.put_cf(self.cf(cf::TOKENS), hash, encode(record));
            hashes.push(hash);
        }
        self.write(batch)?;
        self.tokens.written(&hashes);
        if let Some(upto) = empty_upto {
            // So its first acknowledging /sync skips the inbox scan (without this, every
            // device created since the server started scanned once; at 1,000 new devices,
            // a tenth of the first fan-out's instructions).
            self.stamps.inbox_trimmed(&key, upto);
        }
        Ok(())
    }

    fn update_device(&self, user_id: &UserId, device: &DeviceRecord) -> Result<()> {
        let key = join(&[user_id.as_bytes(), device.device_id.as_bytes()]);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::DEVICES), key, encode(device));
        self.write(batch)
    }

    fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceRecord>> {
        self.get_json(cf::DEVICES, &join(&[user_id.as_bytes(), device_id.as_bytes()]))
    }

    fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRecord>> {
        self.scan_prefix(cf::DEVICES, &prefix(user_id.as_bytes()))?
            .iter()
            .map(|(_, value)| decode(cf::DEVICES, value))
            .collect()
    }

    fn delete_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceListChange>> {
        let key = join(&[user_id.as_bytes(), device_id.as_bytes()]);
        let Some(device) = self.get_json::<DeviceRecord>(cf::DEVICES, &key)? else {
            return Ok(None);
        };
        // The device, its tokens, its keys and its inbox go in one batch with the change
        // that tells everyone sharing a room to stop encrypting to it.
        let change = self.delete_device_with_change(user_id, device_id, |batch| {
            batch.delete_cf(self.cf(cf::DEVICES), &key);
            batch.delete_cf(self.cf(cf::TOKENS), device.token_hash);
            if let Some(hash) = device.refresh_hash {
                batch.delete_cf(self.cf(cf::TOKENS), hash);
            }
        })?;
        self.tokens.written([device.token_hash].iter().chain(device.refresh_hash.as_ref()));
        Ok(Some(change))
    }
}

/// What an append changes in the in-memory caches, applied once it is written.
struct AppendCaches {
    room_id: OwnedRoomId,
    /// The timeline entry written: event id and the state group after it.
    entry: (OwnedEventId, StateGroupId),
    /// Users whose membership the event sets.
    members: Vec<OwnedUserId>,
    /// Unread entries (key `user SEP room`) for the members it notifies; `pos` is set here.
    notified: Vec<(Vec<u8>, UnreadEntry)>,
}

impl AppendCaches {
    fn apply(&self, store: &RocksStorage, pos: StreamPos) {
        store.tails.record(&self.room_id, pos, &self.entry.0, self.entry.1);
        if !self.members.is_empty() {
            store.user_rooms.written(self.members.iter().map(|u| &**u));
            store.room_members.written([&*self.room_id]);
        }
        if !self.notified.is_empty() {
            let changes = self.notified.iter().map(|(key, record)| (&**key, UnreadEntry { pos, ..record.clone() }));
            store.unread.written_with(changes, read_cache::add_unread);
        }
    }
}

/// An append RocksDB refused to take without waiting (see
/// `RoomStore::try_append_event_pending`): its batch, built at its stream position, not
/// written. `RoomStore::finish_stalled_append` writes it; dropped unwritten, it gives its
/// position up (a gap in the stream, like a failed write), so later writes become visible.
#[must_use = "a stalled append holds a stream position until it is written or dropped"]
pub struct StalledAppend {
    pos: StreamPos,
    batch: Vec<u8>,
    caches: AppendCaches,
    positions: Arc<Positions>,
    written: bool,
}

impl Drop for StalledAppend {
    fn drop(&mut self) {
        if !self.written {
            self.positions.finish(self.pos);
        }
    }
}

impl RoomStore for RocksStorage {
    fn next_state_group_id(&self) -> StateGroupId {
        self.next_state_group.fetch_add(1, Ordering::Relaxed)
    }

    fn try_append_event_pending(
        &self,
        append: AppendEvent<'_>,
    ) -> Result<std::result::Result<(StreamPos, WriteTicket), StalledAppend>> {
        let room_id = append.event.room_id.clone();
        let room = room_id.as_bytes();
        let pos = self.positions.allocate();
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::STREAM), u64_key(pos), [KIND_EVENT]);
        let mut event = append.event;
        event.pos = Some(pos);
        if let Some(record) = &append.new_room {
            batch.put_cf(self.cf(cf::ROOMS), room, encode(record));
        }
        for (id, group) in &append.new_state_groups {
            batch.put_cf(self.cf(cf::STATE_GROUPS), u64_key(*id), encode(group));
        }
        let mut entry = append.state_after.to_be_bytes().to_vec();
        entry.extend_from_slice(append.event_id.as_bytes());
        batch.put_cf(self.cf(cf::TIMELINE), with_u64(room, pos), entry);
        batch.put_cf(
            self.cf(cf::STREAM_EVENTS),
            u64_key(pos),
            appservice::stream_event_value(room, append.event_id.as_bytes()),
        );
        let head = RoomHead {
            state_group: append.state_after,
            extremities: append.extremities,
            depth: append.depth,
            last_pos: pos,
            last_bump: if append.bumps { Some(pos) } else { append.last_bump },
        };
        batch.put_cf(self.cf(cf::ROOM_HEADS), room, encode(&head));
        // Conservative: any event whose JSON mentions the member type counts (a PDU
        // from another server is kept as it came, spacing included).
        if !append.memberships.is_empty() || event.pdu.get().contains("m.room.member") {
            self.stamps.raise(Stream::Members, room, pos);
        }
        for (user_id, membership, event_id) in &append.memberships {
            let record = MembershipRecord { membership: membership.clone(), event_id: event_id.clone(), pos };
            batch.put_cf(self.cf(cf::USER_ROOMS), join(&[user_id.as_bytes(), room]), encode(&record));
            batch.put_cf(self.cf(cf::ROOM_MEMBERS), join(&[room, user_id.as_bytes()]), membership.as_bytes());
            if membership == "join" || membership == "invite" || membership == "knock" {
                batch.delete_cf(self.cf(cf::FORGOTTEN), join(&[user_id.as_bytes(), room]));
            }
        }
        if let Some((user_id, session_id, txn_key)) = &append.txn_key {
            batch.put_cf(
                self.cf(cf::TXNS),
                join(&[user_id.as_bytes(), session_id.as_bytes(), txn_key.as_bytes()]),
                append.event_id.as_bytes(),
            );
        }
        if let Some((redacted_id, redacted)) = &append.redact {
            batch.put_cf(self.cf(cf::EVENTS), redacted_id.as_bytes(), encode(redacted));
        }
        batch.put_cf(self.cf(cf::EVENTS), append.event_id.as_bytes(), encode(&event));
        self.write_push(&mut batch, pos, &append.push);
        let caches = AppendCaches {
            entry: (append.event_id.to_owned(), append.state_after),
            members: append.memberships.iter().map(|(user_id, _, _)| user_id.clone()).collect(),
            notified: (append.push.notifications.iter())
                .flat_map(|event| event.members.iter().map(move |member| push::unread_record(event, member)))
                .collect(),
            room_id,
        };
        // `write_opt` consumes the batch: keep its bytes (a few KB) in case RocksDB refuses it.
        let bytes = batch.data().to_vec();
        match self.db.write_opt(batch, &self.no_stall_opts) {
            Ok(()) => Ok(Ok(self.appended(pos, &caches))),
            Err(e) if e.kind() == ::rocksdb::ErrorKind::Incomplete => {
                Ok(Err(StalledAppend { pos, batch: bytes, caches, positions: self.positions.clone(), written: false }))
            }
            Err(e) => {
                self.positions.finish(pos);
                Err(backend(e))
            }
        }
    }

    fn finish_stalled_append(&self, mut stalled: StalledAppend) -> Result<(StreamPos, WriteTicket)> {
        // An error drops `stalled` unwritten, which finishes its position.
        self.db.write_opt(WriteBatch::from_data(&stalled.batch), &self.pending_opts).map_err(backend)?;
        stalled.written = true;
        Ok(self.appended(stalled.pos, &stalled.caches))
    }

    fn store_outliers(
        &self,
        events: Vec<(OwnedEventId, StoredEvent)>,
        groups: Vec<(StateGroupId, StateGroup)>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (id, group) in &groups {
            batch.put_cf(self.cf(cf::STATE_GROUPS), u64_key(*id), encode(group));
        }
        for (event_id, event) in &events {
            batch.put_cf(self.cf(cf::EVENTS), event_id.as_bytes(), encode(event));
        }
        self.write(batch)
    }

    fn insert_backfilled(
        &self,
        room_id: &RoomId,
        events: Vec<(OwnedEventId, StoredEvent, StateGroupId)>,
        groups: Vec<(StateGroupId, StateGroup)>,
    ) -> Result<usize> {
        let Some((oldest, _, _)) = self.timeline(room_id, 0, Direction::Forward, 1)?.into_iter().next() else {
            return Ok(0);
        };
        let mut batch = WriteBatch::default();
        for (id, group) in &groups {
            batch.put_cf(self.cf(cf::STATE_GROUPS), u64_key(*id), encode(group));
        }
        let mut inserted = 0;
        let mut key = oldest;
        for (event_id, mut event, state_after) in events {
            if key <= 1 {
                break;
            }
            key -= 1;
            event.pos = Some(key);
            let mut entry = state_after.to_be_bytes().to_vec();
            entry.extend_from_slice(event_id.as_bytes());
            batch.put_cf(self.cf(cf::TIMELINE), with_u64(room_id.as_bytes(), key), entry);
            batch.put_cf(self.cf(cf::EVENTS), event_id.as_bytes(), encode(&event));
            inserted += 1;
        }
        self.write(batch)?;
        Ok(inserted)
    }

    fn put_outside_membership(
        &self,
        user_id: &UserId,
        membership: &str,
        event_id: &EventId,
        event: StoredEvent,
    ) -> Result<StreamPos> {
        let room = event.room_id.clone();
        let build = |batch: &mut WriteBatch, pos| {
            let record = MembershipRecord { membership: membership.to_owned(), event_id: event_id.to_owned(), pos };
            batch.put_cf(self.cf(cf::USER_ROOMS), join(&[user_id.as_bytes(), room.as_bytes()]), encode(&record));
            if membership == "invite" {
                batch.delete_cf(self.cf(cf::FORGOTTEN), join(&[user_id.as_bytes(), room.as_bytes()]));
            }
            batch.put_cf(self.cf(cf::EVENTS), event_id.as_bytes(), encode(&event));
        };
        // The cached room list is dropped before the position can become visible.
        self.write_prepared_at_new_pos(KIND_EVENT, WriteBatch::default(), build, |_| self.user_rooms.written([user_id]))
    }

    fn event(&self, event_id: &EventId) -> Result<Option<StoredEvent>> {
        self.get_json(cf::EVENTS, event_id.as_bytes())
    }

    fn event_pos(&self, event_id: &EventId) -> Result<Option<StreamPos>> {
        #[derive(serde::Deserialize)]
        struct PosOnly {
            pos: Option<StreamPos>,
        }
        Ok(self.get_json::<PosOnly>(cf::EVENTS, event_id.as_bytes())?.and_then(|e| e.pos))
    }

    fn read_position_changed_after(&self, user_id: &UserId, room_id: &RoomId, since: StreamPos) -> bool {
        with_joined(&[user_id.as_bytes(), room_id.as_bytes()], |key| {
            self.stamps.changed_after(Stream::ReadPosition, key, since)
        })
    }

    fn member_events_after(&self, room_id: &RoomId, since: StreamPos) -> bool {
        self.stamps.changed_after(Stream::Members, room_id.as_bytes(), since)
    }

    fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        self.get_json(cf::ROOMS, room_id.as_bytes())
    }

    fn state_group(&self, id: StateGroupId) -> Result<Option<StateGroup>> {
        self.get_json(cf::STATE_GROUPS, &u64_key(id))
    }

    fn room_head(&self, room_id: &RoomId) -> Result<Option<RoomHead>> {
        self.get_json(cf::ROOM_HEADS, room_id.as_bytes())
    }

    fn timeline(
        &self,
        room_id: &RoomId,
        from: StreamPos,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(StreamPos, OwnedEventId, StateGroupId)>> {
        if dir == Direction::Forward
            && let Some(entries) = self.tails.after(room_id, from, limit)
        {
            return Ok(entries);
        }
        let room_prefix = prefix(room_id.as_bytes());
        let (start, mode) = match dir {
            Direction::Forward => (with_u64(room_id.as_bytes(), from.saturating_add(1)), RDirection::Forward),
            Direction::Backward => {
                if from == 0 {
                    return Ok(Vec::new());
                }
                (with_u64(room_id.as_bytes(), from - 1), RDirection::Reverse)
            }
        };
        let mut out = Vec::new();
        let iter =
            self.db.iterator_cf_opt(self.cf(cf::TIMELINE), bounded(&room_prefix), IteratorMode::From(&start, mode));
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&room_prefix) {
                break;
            }
            out.push(Self::decode_timeline_entry(&key, &value)?);
        }
        Ok(out)
    }

    fn timeline_at(&self, room_id: &RoomId, pos: StreamPos) -> Result<Option<(StreamPos, OwnedEventId, StateGroupId)>> {
        Ok(self.timeline(room_id, pos.saturating_add(1), Direction::Backward, 1)?.into_iter().next())
    }

    fn rooms_of_user(&self, user_id: &UserId) -> Result<Arc<Vec<(OwnedRoomId, MembershipRecord)>>> {
        let generation = match self.user_rooms.get(user_id) {
            Ok(list) => return Ok(list),
            Err(generation) => generation,
        };
        let user_prefix = prefix(user_id.as_bytes());
        let list: Arc<Vec<_>> = self
            .scan_prefix(cf::USER_ROOMS, &user_prefix)?
            .iter()
            .map(|(key, value)| {
                Ok((parse_id(cf::USER_ROOMS, &key[user_prefix.len()..])?, decode(cf::USER_ROOMS, value)?))
            })
            .collect::<Result<Vec<_>>>()?
            .into();
        self.user_rooms.store(user_id.to_owned(), generation, &list);
        Ok(list)
    }

    fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipRecord>> {
        self.get_json(cf::USER_ROOMS, &join(&[user_id.as_bytes(), room_id.as_bytes()]))
    }

    fn members(&self, room_id: &RoomId) -> Result<Arc<Vec<(OwnedUserId, String)>>> {
        let generation = match self.room_members.get(room_id) {
            Ok(list) => return Ok(list),
            Err(generation) => generation,
        };
        let room_prefix = prefix(room_id.as_bytes());
        let list: Arc<Vec<_>> = self
            .scan_prefix(cf::ROOM_MEMBERS, &room_prefix)?
            .iter()
            .map(|(key, value)| {
                Ok((parse_id(cf::ROOM_MEMBERS, &key[room_prefix.len()..])?, decode_str(cf::ROOM_MEMBERS, value)?))
            })
            .collect::<Result<Vec<_>>>()?
            .into();
        self.room_members.store(room_id.to_owned(), generation, &list);
        Ok(list)
    }

    fn forget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::FORGOTTEN), join(&[user_id.as_bytes(), room_id.as_bytes()]), b"");
        self.write(batch)
    }

    fn is_forgotten(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        Ok(self.get(cf::FORGOTTEN, &join(&[user_id.as_bytes(), room_id.as_bytes()]))?.is_some())
    }

    fn txn_event(&self, user_id: &UserId, session_id: &str, txn_key: &str) -> Result<Option<OwnedEventId>> {
        match self.get(cf::TXNS, &join(&[user_id.as_bytes(), session_id.as_bytes(), txn_key.as_bytes()]))? {
            Some(bytes) => parse_id(cf::TXNS, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl MetaStore for RocksStorage {
    fn alias(&self, alias: &RoomAliasId) -> Result<Option<(OwnedRoomId, OwnedUserId)>> {
        let Some(bytes) = self.get(cf::ALIASES, alias.as_bytes())? else { return Ok(None) };
        let split = bytes
            .iter()
            .position(|b| *b == keys::SEP)
            .ok_or(StorageError::Corrupt { table: cf::ALIASES, detail: "no separator".into() })?;
        Ok(Some((parse_id(cf::ALIASES, &bytes[..split])?, parse_id(cf::ALIASES, &bytes[split + 1..])?)))
    }

    fn create_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<bool> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.get(cf::ALIASES, alias.as_bytes())?.is_some() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::ALIASES), alias.as_bytes(), join(&[room_id.as_bytes(), creator.as_bytes()]));
        batch.put_cf(self.cf(cf::ROOM_ALIASES), join(&[room_id.as_bytes(), alias.as_bytes()]), b"");
        self.write(batch)?;
        Ok(true)
    }

    fn delete_alias(&self, alias: &RoomAliasId) -> Result<()> {
        let Some((room_id, _)) = self.alias(alias)? else { return Ok(()) };
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(cf::ALIASES), alias.as_bytes());
        batch.delete_cf(self.cf(cf::ROOM_ALIASES), join(&[room_id.as_bytes(), alias.as_bytes()]));
        self.write(batch)
    }

    fn aliases_of_room(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let room_prefix = prefix(room_id.as_bytes());
        self.scan_prefix(cf::ROOM_ALIASES, &room_prefix)?
            .iter()
            .map(|(key, _)| parse_id(cf::ROOM_ALIASES, &key[room_prefix.len()..]))
            .collect()
    }

    fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        if public {
            batch.put_cf(self.cf(cf::PUBLIC_ROOMS), room_id.as_bytes(), b"");
        } else {
            batch.delete_cf(self.cf(cf::PUBLIC_ROOMS), room_id.as_bytes());
        }
        self.write(batch)
    }

    fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.get(cf::PUBLIC_ROOMS, room_id.as_bytes())?.is_some())
    }

    fn public_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        self.scan_prefix(cf::PUBLIC_ROOMS, b"")?.iter().map(|(key, _)| parse_id(cf::PUBLIC_ROOMS, key)).collect()
    }

    fn put_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: &RawValue,
    ) -> Result<StreamPos> {
        let room = room_id.map(|r| r.as_bytes()).unwrap_or(b"");
        let key = join(&[user_id.as_bytes(), room, kind.as_bytes()]);
        self.write_at_new_pos(KIND_ACCOUNT_DATA, |batch, pos| {
            self.stamps.raise(Stream::AccountData, user_id.as_bytes(), pos);
            let mut value = pos.to_be_bytes().to_vec();
            value.extend_from_slice(content.get().as_bytes());
            batch.put_cf(self.cf(cf::ACCOUNT_DATA), &key, value);
            batch.put_cf(self.cf(cf::ACCOUNT_DATA_STREAM), with_u64(user_id.as_bytes(), pos), &key);
        })
    }

    fn account_data(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Option<Box<RawValue>>> {
        let room = room_id.map(|r| r.as_bytes()).unwrap_or(b"");
        match self.get(cf::ACCOUNT_DATA, &join(&[user_id.as_bytes(), room, kind.as_bytes()]))? {
            Some(bytes) if bytes.len() >= 8 => {
                let text = decode_str(cf::ACCOUNT_DATA, &bytes[8..])?;
                RawValue::from_string(text)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt { table: cf::ACCOUNT_DATA, detail: e.to_string() })
            }
            Some(_) => Err(StorageError::Corrupt { table: cf::ACCOUNT_DATA, detail: "short value".into() }),
            None => Ok(None),
        }
    }

    fn account_data_since(
        &self,
        user_id: &UserId,
        since: StreamPos,
    ) -> Result<Vec<(Option<OwnedRoomId>, String, Box<RawValue>)>> {
        if !self.stamps.changed_after(Stream::AccountData, user_id.as_bytes(), since) {
            return Ok(Vec::new());
        }
        let user_prefix = prefix(user_id.as_bytes());
        let start = with_u64(user_id.as_bytes(), since.saturating_add(1));
        let mut changed_keys = BTreeSet::new();
        for item in
            self.db.iterator_cf(self.cf(cf::ACCOUNT_DATA_STREAM), IteratorMode::From(&start, RDirection::Forward))
        {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&user_prefix) {
                break;
            }
            changed_keys.insert(value.to_vec());
        }
        let mut out = Vec::new();
        for key in changed_keys {
            // key = user SEP room-or-empty SEP type
            let rest = &key[user_prefix.len()..];
            let Some(split) = rest.iter().position(|b| *b == keys::SEP) else { continue };
            let room = &rest[..split];
            let kind = decode_str(cf::ACCOUNT_DATA, &rest[split + 1..])?;
            let room_id: Option<OwnedRoomId> =
                if room.is_empty() { None } else { Some(parse_id(cf::ACCOUNT_DATA, room)?) };
            if let Some(content) = self.account_data(user_id, room_id.as_deref(), &kind)? {
                out.push((room_id, kind, content));
            }
        }
        Ok(out)
    }

    fn put_filter(&self, user_id: &UserId, filter: &RawValue) -> Result<String> {
        // Filter ids are small increasing numbers per user, like Synapse's.
        let existing = self.scan_prefix(cf::FILTERS, &prefix(user_id.as_bytes()))?.len();
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = existing;
        loop {
            let id = n.to_string();
            let key = join(&[user_id.as_bytes(), id.as_bytes()]);
            if self.get(cf::FILTERS, &key)?.is_none() {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(cf::FILTERS), key, filter.get().as_bytes());
                self.write(batch)?;
                return Ok(id);
            }
            n += 1;
        }
    }

    fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<Box<RawValue>>> {
        match self.get(cf::FILTERS, &join(&[user_id.as_bytes(), filter_id.as_bytes()]))? {
            Some(bytes) => RawValue::from_string(decode_str(cf::FILTERS, &bytes)?)
                .map(Some)
                .map_err(|e| StorageError::Corrupt { table: cf::FILTERS, detail: e.to_string() }),
            None => Ok(None),
        }
    }

    fn put_receipt(&self, mut receipt: ReceiptRecord) -> Result<StreamPos> {
        let thread = receipt.thread_id.clone().unwrap_or_default();
        let key = join(&[
            receipt.room_id.as_bytes(),
            receipt.receipt_type.as_bytes(),
            receipt.user_id.as_bytes(),
            thread.as_bytes(),
        ]);
        let room = receipt.room_id.clone();
        self.write_at_new_pos(KIND_RECEIPT, |batch, pos| {
            self.stamps.raise(Stream::Receipts, room.as_bytes(), pos);
            self.stamps.raise(Stream::ReadPosition, &join(&[receipt.user_id.as_bytes(), room.as_bytes()]), pos);
            receipt.pos = pos;
            batch.put_cf(self.cf(cf::RECEIPTS), &key, encode(&receipt));
            batch.put_cf(self.cf(cf::RECEIPTS_STREAM), with_u64(room.as_bytes(), pos), &key);
            batch.put_cf(self.cf(cf::STREAM), u64_key(pos), appservice::stream_receipt_value(&key));
        })
    }

    fn receipts_since(&self, room_id: &RoomId, since: StreamPos) -> Result<Vec<ReceiptRecord>> {
        if !self.stamps.changed_after(Stream::Receipts, room_id.as_bytes(), since) {
            return Ok(Vec::new());
        }
        let room_prefix = prefix(room_id.as_bytes());
        let start = with_u64(room_id.as_bytes(), since.saturating_add(1));
        let mut keys_seen = BTreeSet::new();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf::RECEIPTS_STREAM), IteratorMode::From(&start, RDirection::Forward)) {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&room_prefix) {
                break;
            }
            if keys_seen.insert(value.to_vec())
                && let Some(receipt) = self.get_json::<ReceiptRecord>(cf::RECEIPTS, &value)?
                && receipt.pos > since
            {
                out.push(receipt);
            }
        }
        Ok(out)
    }

    fn receipt(
        &self,
        room_id: &RoomId,
        receipt_type: &str,
        user_id: &UserId,
        thread_id: Option<&str>,
    ) -> Result<Option<ReceiptRecord>> {
        let key = join(&[
            room_id.as_bytes(),
            receipt_type.as_bytes(),
            user_id.as_bytes(),
            thread_id.unwrap_or("").as_bytes(),
        ]);
        self.get_json(cf::RECEIPTS, &key)
    }

    fn server_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(cf::META, key.as_bytes())
    }

    fn put_server_value(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::META), key.as_bytes(), value);
        self.write(batch)
    }
}

impl StreamStore for RocksStorage {
    fn current_pos(&self) -> StreamPos {
        *self.positions.visible.borrow()
    }

    fn subscribe(&self) -> watch::Receiver<StreamPos> {
        self.positions.visible.subscribe()
    }

    fn wait_durable(&self, ticket: WriteTicket) -> Result<()> {
        self.commit
            .wait(&self.positions, ticket, || self.db.flush_wal(true).map_err(|e| e.into_string()))
            .map_err(StorageError::Backend)
    }

    fn latest_write(&self) -> WriteTicket {
        self.commit.latest()
    }

    fn has_unsynced(&self) -> bool {
        self.commit.has_unsynced()
    }
}

#[cfg(test)]
impl RocksStorage {
    /// Stops every write the way RocksDB does when level 0 fills up faster than compactions
    /// empty it: the level-0 limits drop to one file (with no compaction due), and every
    /// column family is flushed to a level-0 file. `unstall` lifts the limits.
    pub(crate) fn stall_writes(&self) {
        self.set_level0_limits(&[
            ("level0_file_num_compaction_trigger", "1000"),
            ("level0_slowdown_writes_trigger", "1"),
            ("level0_stop_writes_trigger", "1"),
        ]);
        for name in schema::ALL {
            self.db.flush_cf(self.cf(name)).unwrap();
        }
    }

    pub(crate) fn unstall(&self) {
        self.set_level0_limits(&[("level0_slowdown_writes_trigger", "1000"), ("level0_stop_writes_trigger", "1000")]);
    }

    /// Set at run time, where RocksDB does not reorder them as it does at open.
    fn set_level0_limits(&self, limits: &[(&str, &str)]) {
        for name in schema::ALL {
            self.db.set_options_cf(self.cf(name), limits).unwrap();
        }
    }
}

#[cfg(test)]
mod stall_tests {
    use ruma::{event_id, room_id, user_id};

    use super::RocksStorage;
    use crate::storage::{RoomStore, StorageConfig, StreamStore, tests::append_record};

    /// RocksDB-specific: a write stall (here: too many level-0 files) makes the
    /// non-waiting append give its write back instead of blocking an async worker.
    #[test]
    fn an_append_rocksdb_would_hold_back_comes_back_unwritten_and_is_finished_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        let room = room_id!("!r:x");
        let first = store.append_event(append_record(room, &event_id!("$first").to_owned(), None)).unwrap();
        store.stall_writes();
        let (a, b) = (event_id!("$a").to_owned(), event_id!("$b").to_owned());
        let stalled_a = store.try_append_event_pending(append_record(room, &a, None)).unwrap().unwrap_err();
        let stalled_b =
            store.try_append_event_pending(append_record(room, &b, Some(("@bob:x", "join")))).unwrap().unwrap_err();
        assert!(store.event(&a).unwrap().is_none() && store.event(&b).unwrap().is_none(), "nothing written");
        assert!(store.rooms_of_user(user_id!("@bob:x")).unwrap().is_empty());
        // Given up, a stalled append leaves a gap in the stream and holds no later write back.
        drop(stalled_a);
        // The blocking calls wait the stall out.
        let c = event_id!("$c").to_owned();
        let (pos_b, pos_c) = std::thread::scope(|scope| {
            let b = scope.spawn(|| {
                let (pos, ticket) = store.finish_stalled_append(stalled_b).unwrap();
                store.wait_durable(ticket).unwrap();
                pos
            });
            let c = scope.spawn(|| store.append_event(append_record(room, &c, None)).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!b.is_finished() && !c.is_finished(), "held back by the stall");
            store.unstall();
            (b.join().unwrap(), c.join().unwrap())
        });
        assert_eq!(pos_b, first + 2, "the stalled append kept its position");
        assert_eq!(pos_c, first + 3);
        assert_eq!(store.current_pos(), pos_c, "visible once durable, past the gap");
        assert!(store.event(&a).unwrap().is_none());
        assert!(store.event(&b).unwrap().is_some() && store.event(&c).unwrap().is_some());
        let rooms = store.rooms_of_user(user_id!("@bob:x")).unwrap();
        assert_eq!(rooms.len(), 1, "the membership cache was brought up to date: {rooms:?}");
        assert_eq!(rooms[0].1.pos, pos_b);
    }
}

#[cfg(test)]
mod inbox_tests {
    use ruma::{device_id, user_id};
    use serde_json::value::RawValue;

    use super::{RocksStorage, join};
    use crate::storage::{DeviceRecord, StorageConfig, StreamStore, TokenKind, TokenRecord, UserStore, e2ee::KeyStore};

    fn message(n: u32) -> Box<RawValue> {
        RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap()
    }

    /// RocksDB-specific: a device created while the server runs starts with an inbox known
    /// to be empty (its first acknowledging sync skips the scan); messages queued for it
    /// later are still found, delivered and trimmed, and a token renewal of an existing
    /// device marks nothing.
    #[test]
    fn a_new_device_needs_no_inbox_scan_and_later_messages_are_still_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let (bob, device) = (user_id!("@b:x"), device_id!("NEW"));
        let key = join(&[bob.as_bytes(), device.as_bytes()]);
        // Data from before a restart: devices not seen since answer "scan once".
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        store.queue_to_device(None, vec![(bob.to_owned(), device_id!("OLD").to_owned(), message(0))]).unwrap();
        drop(store);
        let store = RocksStorage::open(&StorageConfig::at(dir.path())).unwrap();
        assert!(store.stamps.inbox_holds_up_to(&key, store.current_pos()), "unknown after a restart: scanned");
        let record = |hash: u8| DeviceRecord {
            device_id: device.to_owned(),
            display_name: None,
            created_ts: 0,
            last_seen_ts: None,
            last_seen_ip: None,
            token_hash: [hash; 32],
            refresh_hash: None,
        };
        let token = |hash: u8| TokenRecord {
            user_id: bob.to_owned(),
            device_id: device.to_owned(),
            session_id: format!("S{hash}"),
            expires_at: None,
            kind: TokenKind::Access,
        };
        store.put_device_with_tokens(bob, &record(1), &token(1), None).unwrap();
        assert!(!store.stamps.inbox_holds_up_to(&key, store.current_pos()), "a new device's inbox is empty");

        let first =
            store.queue_to_device(None, vec![(bob.to_owned(), device.to_owned(), message(1))]).unwrap().unwrap();
        assert!(store.stamps.inbox_holds_up_to(&key, first));
        // A renewed token rewrites the existing device: its inbox keeps what it holds.
        store.put_device_with_tokens(bob, &record(2), &token(2), None).unwrap();
        assert!(store.stamps.inbox_holds_up_to(&key, first), "a renewal marks nothing");
        assert_eq!(store.to_device_messages(bob, device, 0, first, 10).unwrap().len(), 1);
        store.delete_to_device(bob, device, first).unwrap();
        assert!(store.to_device_messages(bob, device, 0, u64::MAX, 10).unwrap().is_empty(), "trimmed");
    }
}
