//! RocksDB storage: opening and versioning the data directory, the reads the engine needs,
//! and (in [`writer`]) the group-commit writer every change goes through.
//!
//! Every call here blocks; the engine runs them on the writer thread or through
//! `smol::unblock`, never on the async executor.

mod batch;
pub mod codec;
pub mod keys;
pub mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, DB};

pub use batch::{Batch, KeyWrite};
pub use codec::{
    MemberRecord, MessageRecord, ReadRecord, RoomRecord, StampRecord, StoredMessageKind,
    StoredRoomKind,
};
pub use keys::Cf;
pub use writer::{WriteOp, Writer};

use crate::config::StorageConfig;
pub use crate::error::StorageError;
use crate::sync;

/// The schema version this build writes. Data from an older version is migrated at start-up;
/// data from a newer one is refused.
pub const SCHEMA_VERSION: u32 = 3;

/// Ordered migrations: `(from, step)` upgrades a data directory at version `from` to
/// `from + 1`.
type Migration = fn(&Storage) -> Result<(), StorageError>;
const MIGRATIONS: &[(u32, Migration)] = &[
    (1, messages_carry_change_state),
    (2, rooms_keep_counts_and_activity),
];

/// Schema 2: message records (format 2) carry their change state. Format 1 records are read
/// as messages that were never changed, so nothing is rewritten; the version moves so that an
/// older build, which cannot read format 2, refuses the directory instead of failing later.
fn messages_carry_change_state(_storage: &Storage) -> Result<(), StorageError> {
    Ok(())
}

/// Schema 3: rooms are loaded on demand, so what needed every room in memory is kept on
/// disk. Each open room gets its content count and each member a [`ReadRecord`] (schema 2
/// stored the marker alone), counted from the messages stored; each open route room gets an
/// `activity` entry at its last activity. One pass over the open rooms' messages.
fn rooms_keep_counts_and_activity(storage: &Storage) -> Result<(), StorageError> {
    let rooms = storage.open_rooms()?;
    log::info!("counting the messages of {} open rooms", rooms.len());
    for (room_id, record) in rooms {
        let mut batch = Batch::new();
        let members: Vec<(String, u64)> = storage
            .members(&room_id)?
            .into_iter()
            .map(|(user, _)| {
                let key = keys::pair(&user, &room_id);
                let seq = storage.get::<u64>(Cf::Reads, &key)?.unwrap_or(0);
                Ok((user, seq))
            })
            .collect::<Result<_, StorageError>>()?;
        let mut counts = vec![ReadRecord::default(); members.len()];
        for ((_, seq), count) in members.iter().zip(counts.iter_mut()) {
            count.seq = *seq;
        }
        let mut content = 0;
        storage.walk_messages(record.number, 0, |seq, message| {
            if !message.kind.is_content() {
                return true;
            }
            content += 1;
            for ((user, _), count) in members.iter().zip(counts.iter_mut()) {
                if message.sender.as_deref() == Some(user) {
                    count.own += 1;
                } else if seq <= count.seq {
                    count.base += 1;
                }
            }
            true
        })?;
        batch.content_count(record.number, content);
        for ((user, _), count) in members.iter().zip(counts) {
            batch.read_record(user, &room_id, count);
        }
        if record.kind == StoredRoomKind::Route {
            let last = storage.last_stamp(record.number)?.map_or(0, |s| s.ts);
            let membership = storage.membership_changed(record.number)?.unwrap_or(0);
            batch.activity(record.created_ts.max(last).max(membership), &room_id);
        }
        storage.write(&batch.writes, false)?;
    }
    Ok(())
}

/// The number of the outbox's newest event, if it holds any.
fn last_event(db: &DB) -> Result<Option<u64>, StorageError> {
    let Some(cf) = db.cf_handle(Cf::Outbox.name()) else {
        return Ok(None);
    };
    match db.iterator_cf(cf, IteratorMode::End).next() {
        Some(entry) => Ok(Some(event_number(&entry?.0)?)),
        None => Ok(None),
    }
}

fn event_number(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StorageError::Corrupt {
        cf: Cf::Outbox.name(),
        reason: "bad outbox key".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Db(e.into_string())
    }
}

/// A room's messages older than the retention cutoff: seqs `first_seq..=newest.seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub count: u64,
    pub first_seq: u64,
    pub newest: StampRecord,
}

/// A pending notify that is due: its key (to resolve it) and its JSON.
pub type DueNotify = (Vec<u8>, Vec<u8>);

/// Where a message range starts and which way it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqRange {
    /// Messages with seq > the bound, oldest first.
    After(u64),
    /// Messages with seq < the bound, the newest `limit` of them, returned oldest first.
    Before(u64),
}

pub struct Storage {
    db: DB,
    /// The number the next outbox event gets.
    next_event: std::sync::Mutex<u64>,
    /// Dedup records of messages older than this ts (ms) are gone: retention deleted their
    /// messages. Lookups ignore them and compactions drop them. 0 until retention says.
    dedup_expired_before: Arc<AtomicU64>,
    /// Test hook: while set, every write fails as a full disk would.
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::atomic::AtomicBool,
}

impl Storage {
    /// Opens (or creates) the data directory `config.path` and brings its schema up to date.
    pub fn open(config: &StorageConfig) -> Result<Storage, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // One budget for every family's memtables; a family flushes early when it is spent.
        options.set_db_write_buffer_size(config.write_buffer_bytes);
        // One block cache for every family, holding their index and filter blocks too:
        // without it each family keeps its own 32 MiB cache, and what the server holds grows
        // with every room ever read instead of staying within one budget.
        let cache = rocksdb::Cache::new_lru_cache(config.block_cache_bytes);
        let mut tables = rocksdb::BlockBasedOptions::default();
        tables.set_block_cache(&cache);
        tables.set_cache_index_and_filter_blocks(true);
        tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Most point reads are for keys that do not exist (a new client_msg_id): a filter
        // answers those without reading a data block of every table.
        tables.set_bloom_filter(10.0, false);
        let dedup_expired_before = Arc::new(AtomicU64::new(0));
        let families = Cf::ALL.iter().map(|cf| {
            let mut family = Options::default();
            family.set_write_buffer_size(config.write_buffer_bytes);
            family.set_block_based_table_factory(&tables);
            if *cf == Cf::Dedup {
                let expired_before = dedup_expired_before.clone();
                family.set_compaction_filter("expired_dedup", move |_, _, value: &[u8]| {
                    let cutoff = expired_before.load(Ordering::Relaxed);
                    match codec::decode::<StampRecord>(Cf::Dedup.name(), value) {
                        Ok(stamp) if stamp.ts < cutoff => Decision::Remove,
                        _ => Decision::Keep,
                    }
                });
                // Tables are compacted, and so filtered, at least daily, even where no
                // new writes would make them.
                family.set_periodic_compaction_seconds(24 * 60 * 60);
            }
            ColumnFamilyDescriptor::new(cf.name(), family)
        });
        let db = DB::open_cf_descriptors(&options, &config.path, families)?;
        let next_event = last_event(&db)?.map_or(1, |last| last + 1);
        let storage = Storage {
            db,
            next_event: std::sync::Mutex::new(next_event),
            dedup_expired_before,
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicBool::new(false),
        };
        storage.upgrade_schema()?;
        if storage.get::<String>(Cf::Meta, keys::META_EPOCH)?.is_none() {
            storage.renew_epoch()?;
        }
        Ok(storage)
    }

    /// Up to `limit` events of the outbox, oldest first, with their numbers.
    ///
    /// It starts at number `from`: the reader keeps where it is, so it never walks over the
    /// delete markers of what it delivered.
    pub fn events(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut found = Vec::new();
        let start = keys::outbox(from);
        let mode = IteratorMode::From(&start, Direction::Forward);
        for entry in self.db.iterator_cf(self.cf(Cf::Outbox), mode) {
            let (key, value) = entry?;
            if found.len() == limit {
                break;
            }
            found.push((event_number(&key)?, value.to_vec()));
        }
        Ok(found)
    }

    /// Up to `limit` pending notifies due at or before `now`, oldest first.
    pub fn due_notifies(&self, now: u64, limit: usize) -> Result<Vec<DueNotify>, StorageError> {
        let mut found = Vec::new();
        for entry in self
            .db
            .iterator_cf(self.cf(Cf::Notify), IteratorMode::Start)
        {
            let (key, value) = entry?;
            let due = keys::notify_due(&key).ok_or_else(|| StorageError::Corrupt {
                cf: Cf::Notify.name(),
                reason: "bad notify key".into(),
            })?;
            if due > now || found.len() == limit {
                break;
            }
            found.push((key.to_vec(), value.to_vec()));
        }
        Ok(found)
    }

    /// How many events the outbox holds, and the number of the oldest.
    /// Looks from number `from` on.
    pub fn events_pending(&self, from: u64) -> Result<(u64, u64), StorageError> {
        let start = keys::outbox(from);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let first = self
            .db
            .iterator_cf(self.cf(Cf::Outbox), mode)
            .next()
            .transpose()?
            .map(|(key, _)| event_number(&key))
            .transpose()?;
        let next = *sync::lock(&self.next_event);
        Ok(first.map_or((0, next), |first| (next - first, first)))
    }

    /// The history epoch of this data directory: named at its creation, renamed by
    /// `chat-engine restore`. Clients that cached history under another epoch drop it.
    pub fn epoch(&self) -> Result<String, StorageError> {
        self.get::<String>(Cf::Meta, keys::META_EPOCH)?
            .ok_or_else(|| StorageError::Corrupt {
                cf: Cf::Meta.name(),
                reason: "no history epoch".into(),
            })
    }

    /// Gives the data directory a new history epoch (8 hex digits) and returns it.
    pub fn renew_epoch(&self) -> Result<String, StorageError> {
        let epoch = format!("{:08x}", fastrand::u32(..));
        self.write(&[KeyWrite::put(Cf::Meta, keys::META_EPOCH, &epoch)], true)?;
        Ok(epoch)
    }

    /// Writes a consistent copy of the whole database to `dir`, which must not exist yet: a
    /// RocksDB checkpoint (memtables flushed, table files hard-linked when `dir` is on the
    /// same file system, copied otherwise). The copy is a complete data directory.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StorageError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// Stops RocksDB's flushes and compactions and waits for the running ones. Called once
    /// the writer has stopped: the process may exit while the database is still referenced
    /// (a connection task tide has not dropped yet), and a background job still running
    /// while the process's static destructors run crashes it.
    ///
    /// It first flushes the memtables, so the next start has no write-ahead log to replay
    /// (up to `storage.write_buffer_bytes` of it otherwise, which takes seconds).
    pub fn stop_background_work(&self) {
        for cf in Cf::ALL {
            if let Err(e) = self.db.flush_cf(self.cf(cf)) {
                log::warn!("flushing {} at shutdown failed: {e}", cf.name());
            }
        }
        self.db.cancel_all_background_work(true);
    }

    fn upgrade_schema(&self) -> Result<(), StorageError> {
        let stored = self.get::<u32>(Cf::Meta, keys::META_SCHEMA_VERSION)?;
        let mut version = match stored {
            Some(version) => version,
            None if self.is_empty()? => SCHEMA_VERSION,
            None => {
                return Err(StorageError::Corrupt {
                    cf: Cf::Meta.name(),
                    reason: "data present but no schema version".into(),
                })
            }
        };
        if version > SCHEMA_VERSION {
            return Err(StorageError::NewerSchema {
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        for (from, migrate) in MIGRATIONS {
            if *from == version {
                log::info!(
                    "migrating data directory from schema {from} to {}",
                    from + 1
                );
                migrate(self)?;
                version = from + 1;
            }
        }
        if stored != Some(version) {
            self.write(
                &[KeyWrite::put(Cf::Meta, keys::META_SCHEMA_VERSION, &version)],
                true,
            )?;
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, StorageError> {
        for cf in Cf::ALL {
            if let Some(entry) = self.db.iterator_cf(self.cf(cf), IteratorMode::Start).next() {
                entry?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every family in `Cf::ALL` is created at open.
        self.db.cf_handle(cf.name()).expect("column family opened")
    }

    /// Applies `writes` atomically; with `sync`, returns only once they are in the synced WAL.
    pub fn write<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a KeyWrite>,
        sync: bool,
    ) -> Result<(), StorageError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Db("injected write failure".into()));
        }
        let mut batch = rocksdb::WriteBatch::default();
        // Outbox numbers are handed out in commit order: under this lock, held until the
        // batch is written.
        let mut next_event = None;
        for write in writes {
            match write {
                KeyWrite::Event(json) => {
                    let next = next_event.get_or_insert_with(|| sync::lock(&self.next_event));
                    batch.put_cf(self.cf(Cf::Outbox), keys::outbox(**next), json);
                    **next += 1;
                }
                KeyWrite::Put(cf, key, value) => batch.put_cf(self.cf(*cf), key, value),
                KeyWrite::Delete(cf, key) => batch.delete_cf(self.cf(*cf), key),
                KeyWrite::DeleteRange(cf, from, to) => {
                    batch.delete_range_cf(self.cf(*cf), from, to)
                }
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            Some(bytes) => Ok(Some(codec::decode(cf.name(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every `(key, value)` of `cf` whose key starts with `prefix`, in key order.
    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StorageError> {
        let mode = IteratorMode::From(prefix, Direction::Forward);
        let mut found = Vec::new();
        for entry in self.db.iterator_cf(self.cf(cf), mode) {
            let (key, value) = entry?;
            if !key.starts_with(prefix) {
                break;
            }
            found.push((key.to_vec(), codec::decode(cf.name(), &value)?));
        }
        Ok(found)
    }

    /// The keys of `cf` that start with `prefix`, with the prefix cut off.
    fn scan_keys(&self, cf: Cf, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        let mode = IteratorMode::From(prefix, Direction::Forward);
        let mut found = Vec::new();
        for entry in self.db.iterator_cf(self.cf(cf), mode) {
            let (key, _) = entry?;
            match key.strip_prefix(prefix) {
                Some(rest) => found.push(rest.to_vec()),
                None => break,
            }
        }
        Ok(found)
    }

    pub fn next_room_number(&self) -> Result<u64, StorageError> {
        Ok(self
            .get(Cf::Meta, keys::META_NEXT_ROOM_NUMBER)?
            .unwrap_or(1))
    }

    /// The id (milliseconds, sequence) of the last entry of cluster log `shard` applied here.
    pub fn cluster_position(&self, shard: u16) -> Result<Option<(u64, u64)>, StorageError> {
        self.get(Cf::Meta, &keys::cluster_position(shard))
    }

    /// The Redis data set this node's cluster positions belong to.
    pub fn cluster_epoch(&self) -> Result<Option<String>, StorageError> {
        self.get(Cf::Meta, keys::META_CLUSTER_EPOCH)
    }

    pub fn room(&self, room_id: &str) -> Result<Option<RoomRecord>, StorageError> {
        self.get(Cf::Rooms, &keys::room(room_id))
    }

    /// Every room that is not closed (schema migrations).
    fn open_rooms(&self) -> Result<Vec<(String, RoomRecord)>, StorageError> {
        let mut rooms = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.rooms_after(&after, 1000)?;
            let Some((last, _)) = page.last() else {
                return Ok(rooms);
            };
            after = last.clone();
            rooms.extend(page.into_iter().filter(|(_, r)| r.closed_ts.is_none()));
        }
    }

    /// Up to `limit` room records (closed rooms' tombstones included) in id order, after
    /// `after` ("" for the first): a pass over every room in bounded memory.
    pub fn rooms_after(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, RoomRecord)>, StorageError> {
        let start = keys::room(after);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut rooms = Vec::new();
        for entry in self.db.iterator_cf(self.cf(Cf::Rooms), mode) {
            let (key, value) = entry?;
            if *key == *start {
                continue;
            }
            if rooms.len() == limit {
                break;
            }
            let id = String::from_utf8(key.to_vec()).map_err(|_| StorageError::Corrupt {
                cf: Cf::Rooms.name(),
                reason: "room id is not UTF-8".into(),
            })?;
            rooms.push((id, codec::decode(Cf::Rooms.name(), &value)?));
        }
        Ok(rooms)
    }

    pub fn members(&self, room_id: &str) -> Result<Vec<(String, MemberRecord)>, StorageError> {
        let members = self.scan::<MemberRecord>(Cf::Members, &keys::pair_prefix(room_id))?;
        members
            .into_iter()
            .map(|(key, record)| match keys::split_pair(&key) {
                Some((_, user)) => Ok((user.to_owned(), record)),
                None => Err(StorageError::Corrupt {
                    cf: Cf::Members.name(),
                    reason: "bad member key".into(),
                }),
            })
            .collect()
    }

    pub fn read_record(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> Result<Option<ReadRecord>, StorageError> {
        self.get(Cf::Reads, &keys::pair(user_id, room_id))
    }

    /// The `text` and `system` messages a room ever had (0 before its first).
    pub fn content_count(&self, room_number: u64) -> Result<u64, StorageError> {
        Ok(self
            .get(Cf::Meta, &keys::content_count(room_number))?
            .unwrap_or(0))
    }

    /// The ids of the rooms `user_id` is a member of, in id order.
    pub fn rooms_of_user(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
        self.scan_keys(Cf::UserRooms, &keys::pair_prefix(user_id))?
            .into_iter()
            .map(|room| {
                String::from_utf8(room).map_err(|_| StorageError::Corrupt {
                    cf: Cf::UserRooms.name(),
                    reason: "room id is not UTF-8".into(),
                })
            })
            .collect()
    }

    /// Up to `limit` `activity` entries with ts at or before `cutoff`, oldest first.
    pub fn idle_candidates(
        &self,
        cutoff: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let mut found = Vec::new();
        for entry in self
            .db
            .iterator_cf(self.cf(Cf::Activity), IteratorMode::Start)
        {
            let (key, _) = entry?;
            let Some((ts, room_id)) = keys::split_activity(&key) else {
                return Err(StorageError::Corrupt {
                    cf: Cf::Activity.name(),
                    reason: "bad activity key".into(),
                });
            };
            if ts > cutoff || found.len() == limit {
                break;
            }
            found.push((ts, room_id.to_owned()));
        }
        Ok(found)
    }

    pub fn dedup(
        &self,
        room_number: u64,
        sender: Option<&str>,
        client_msg_id: &str,
    ) -> Result<Option<StampRecord>, StorageError> {
        let found: Option<StampRecord> =
            self.get(Cf::Dedup, &keys::dedup(room_number, sender, client_msg_id))?;
        let cutoff = self.dedup_expired_before.load(Ordering::Relaxed);
        Ok(found.filter(|stamp| stamp.ts >= cutoff))
    }

    /// Forgets the dedup records of messages older than `ts` (ms), whose messages retention
    /// deleted: a `client_msg_id` is remembered as long as its message is kept.
    pub fn expire_dedup_before(&self, ts: u64) {
        self.dedup_expired_before.fetch_max(ts, Ordering::Relaxed);
    }

    /// Whether [`Storage::dedup`] may find something: `false` means it will not. Reads
    /// memtables and cached filters only, never the disk, so it is cheap enough for the
    /// executor, and a filter rules out nearly every `client_msg_id` never seen.
    pub fn dedup_may_exist(
        &self,
        room_number: u64,
        sender: Option<&str>,
        client_msg_id: &str,
    ) -> bool {
        let key = keys::dedup(room_number, sender, client_msg_id);
        self.db.key_may_exist_cf(self.cf(Cf::Dedup), key)
    }

    pub fn message(
        &self,
        room_number: u64,
        seq: u64,
    ) -> Result<Option<MessageRecord>, StorageError> {
        match self
            .db
            .get_pinned_cf(self.cf(Cf::Messages), keys::message(room_number, seq))?
        {
            Some(bytes) => Ok(Some(codec::decode_message(Cf::Messages.name(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` messages of a room in `range`, oldest first.
    pub fn messages(
        &self,
        room_number: u64,
        range: SeqRange,
        limit: usize,
    ) -> Result<Vec<(u64, MessageRecord)>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Messages));
        let mut found = Vec::new();
        match range {
            SeqRange::After(seq) => iter.seek(keys::message(room_number, seq.saturating_add(1))),
            SeqRange::Before(0) => return Ok(found),
            SeqRange::Before(seq) => iter.seek_for_prev(keys::message(room_number, seq - 1)),
        }
        while iter.valid() && found.len() < limit {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            match keys::split_message(key) {
                Some((number, seq)) if number == room_number => {
                    found.push((seq, codec::decode_message(Cf::Messages.name(), value)?));
                }
                _ => break,
            }
            match range {
                SeqRange::After(_) => iter.next(),
                SeqRange::Before(_) => iter.prev(),
            }
        }
        iter.status()?;
        if matches!(range, SeqRange::Before(_)) {
            found.reverse();
        }
        Ok(found)
    }

    /// The newest message of a room.
    pub fn last_message(
        &self,
        room_number: u64,
    ) -> Result<Option<(u64, MessageRecord)>, StorageError> {
        Ok(self
            .messages(room_number, SeqRange::Before(u64::MAX), 1)?
            .pop())
    }

    /// The moment (Unix seconds) at or before which `user_id`'s tokens were revoked, if ever.
    pub fn revoked(&self, user_id: &str) -> Result<Option<u64>, StorageError> {
        self.get(Cf::Meta, &keys::revoked(user_id))
    }

    /// When a room's membership last changed, if it has since it was created.
    pub fn membership_changed(&self, room_number: u64) -> Result<Option<u64>, StorageError> {
        self.get(Cf::Meta, &keys::membership_changed(room_number))
    }

    /// The seq and ts of a room's newest message, stored or deleted by retention.
    pub fn last_stamp(&self, room_number: u64) -> Result<Option<StampRecord>, StorageError> {
        let stored = self
            .last_message(room_number)?
            .map(|(seq, message)| StampRecord {
                seq,
                ts: message.ts,
            });
        let purged = self.get::<StampRecord>(Cf::Meta, &keys::purged(room_number))?;
        Ok(stored.into_iter().chain(purged).max_by_key(|s| s.seq))
    }

    /// The messages of a room older than `cutoff_ts` (ts grows with seq, so they are the
    /// oldest ones): how many there are, the seq of the first one, and the newest one's
    /// stamp. `None` when none is that old.
    pub fn expired(
        &self,
        room_number: u64,
        cutoff_ts: u64,
    ) -> Result<Option<Expired>, StorageError> {
        let (mut count, mut first_seq, mut newest) = (0, 0, None);
        self.walk_messages(room_number, 0, |seq, message| {
            if message.ts >= cutoff_ts {
                return false;
            }
            if count == 0 {
                first_seq = seq;
            }
            count += 1;
            newest = Some(StampRecord {
                seq,
                ts: message.ts,
            });
            true
        })?;
        Ok(newest.map(|newest| Expired {
            count,
            first_seq,
            newest,
        }))
    }

    /// Visits a room's messages oldest first, from seq `from`, while `visit` returns true.
    fn walk_messages(
        &self,
        room_number: u64,
        from: u64,
        mut visit: impl FnMut(u64, MessageRecord) -> bool,
    ) -> Result<(), StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Messages));
        iter.seek(keys::message(room_number, from));
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            match keys::split_message(key) {
                Some((number, seq)) if number == room_number => {
                    if !visit(seq, codec::decode_message(Cf::Messages.name(), value)?) {
                        break;
                    }
                }
                _ => break,
            }
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    /// The oldest seq still stored for a room.
    pub fn first_seq(&self, room_number: u64) -> Result<Option<u64>, StorageError> {
        Ok(self
            .messages(room_number, SeqRange::After(0), 1)?
            .first()
            .map(|(seq, _)| *seq))
    }

    /// Unread messages for `user_id` with seq in `(after, upto]`: `text` and `system`
    /// messages not sent by them.
    pub fn count_unread(
        &self,
        room_number: u64,
        after: u64,
        upto: u64,
        user_id: &str,
    ) -> Result<u64, StorageError> {
        let mut count = 0;
        self.walk_messages(room_number, after.saturating_add(1), |seq, message| {
            if seq > upto {
                return false;
            }
            if message.kind.is_content() && message.sender.as_deref() != Some(user_id) {
                count += 1;
            }
            true
        })?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_at(path: &std::path::Path) -> StorageConfig {
        StorageConfig {
            path: path.to_owned(),
            ..StorageConfig::default()
        }
    }
    fn record(ts: u64, sender: &str) -> MessageRecord {
        MessageRecord {
            ts,
            sender: Some(sender.into()),
            text: format!("m{ts}"),
            ..MessageRecord::default()
        }
    }

    fn store_messages(storage: &Storage, room: u64, seqs: std::ops::RangeInclusive<u64>) {
        let mut batch = Batch::new();
        for seq in seqs {
            let sender = if seq % 2 == 0 { "even" } else { "odd" };
            batch.message(room, seq, &record(seq, sender));
        }
        storage.write(&batch.writes, true).unwrap();
    }

    #[test]
    fn message_ranges_stay_inside_their_room() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&config_at(dir.path())).unwrap();
        store_messages(&storage, 1, 1..=10);
        store_messages(&storage, 2, 1..=3);
        let seqs = |range, limit| -> Vec<u64> {
            let found = storage.messages(1, range, limit).unwrap();
            found.into_iter().map(|(seq, _)| seq).collect()
        };
        assert_eq!(seqs(SeqRange::After(7), 10), [8, 9, 10]);
        assert_eq!(seqs(SeqRange::After(0), 2), [1, 2]);
        assert_eq!(seqs(SeqRange::Before(4), 10), [1, 2, 3]);
        assert_eq!(seqs(SeqRange::Before(u64::MAX), 2), [9, 10]);
        assert_eq!(seqs(SeqRange::Before(1), 5), Vec::<u64>::new());
        assert_eq!(storage.last_message(2).unwrap().unwrap().0, 3);
        assert_eq!(storage.last_message(3).unwrap(), None);
        assert_eq!(storage.first_seq(1).unwrap(), Some(1));
        assert_eq!(storage.count_unread(1, 4, 9, "even").unwrap(), 3);
    }

    /// The filter check never misses a stored id, in a memtable or in a table on disk, and
    /// rules out nearly every id never stored.
    #[test]
    fn dedup_may_exist_never_misses_a_stored_id() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&config_at(dir.path())).unwrap();
        let mut batch = Batch::new();
        for n in 0..1_000u64 {
            let stamp = StampRecord { seq: n + 1, ts: n };
            batch.dedup(7, Some("rider"), &format!("c{n}"), stamp);
        }
        storage.write(&batch.writes, true).unwrap();
        let stored = |storage: &Storage| {
            (0..1_000).all(|n| storage.dedup_may_exist(7, Some("rider"), &format!("c{n}")))
        };
        assert!(stored(&storage), "in the memtable");
        storage.db.flush_cf(storage.cf(Cf::Dedup)).unwrap();
        assert!(stored(&storage), "in a table");
        let ruled_out = (0..1_000)
            .filter(|n| !storage.dedup_may_exist(7, Some("rider"), &format!("new{n}")))
            .count();
        assert!(
            ruled_out > 950,
            "the filter ruled out {ruled_out} of 1000 new ids"
        );
        assert_eq!(
            storage.dedup(7, Some("rider"), "c3").unwrap().unwrap().seq,
            4
        );
    }

    /// Dedup records older than retention's cutoff are ignored at once and dropped by the
    /// next compaction; newer ones stay.
    #[test]
    fn expired_dedup_records_are_ignored_then_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&config_at(dir.path())).unwrap();
        let mut batch = Batch::new();
        for n in 0..100u64 {
            let stamp = StampRecord {
                seq: n + 1,
                ts: 1_000 + n,
            };
            batch.dedup(3, None, &format!("c{n}"), stamp);
        }
        storage.write(&batch.writes, true).unwrap();
        storage.expire_dedup_before(1_050);
        assert!(storage.dedup(3, None, "c49").unwrap().is_none(), "expired");
        assert_eq!(storage.dedup(3, None, "c50").unwrap().unwrap().seq, 51);
        let records = |storage: &Storage| {
            let cf = storage.cf(Cf::Dedup);
            storage.db.iterator_cf(cf, IteratorMode::Start).count()
        };
        assert_eq!(records(&storage), 100, "still on disk until compacted");
        storage.db.flush_cf(storage.cf(Cf::Dedup)).unwrap();
        storage
            .db
            .compact_range_cf(storage.cf(Cf::Dedup), None::<&[u8]>, None::<&[u8]>);
        assert_eq!(
            records(&storage),
            50,
            "the compaction dropped the expired half"
        );
        // The cutoff never moves back.
        storage.expire_dedup_before(10);
        assert!(storage.dedup(3, None, "c0").unwrap().is_none());
    }

    #[test]
    fn schema_2_gains_read_counts_content_counts_and_activity() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(&config_at(dir.path())).unwrap();
            let mut batch = Batch::new();
            let room = |kind| RoomRecord {
                number: 1,
                kind,
                owner: None,
                created_ts: 5,
                closed_ts: None,
            };
            batch.room("r", &room(StoredRoomKind::Route));
            batch.room(
                "dm",
                &RoomRecord {
                    number: 2,
                    ..room(StoredRoomKind::Direct)
                },
            );
            storage.write(&batch.writes, true).unwrap();
            // seqs 1..=6 alternate odd/even senders; a reaction at 7 counts for nobody.
            store_messages(&storage, 1, 1..=6);
            let reaction = MessageRecord {
                kind: StoredMessageKind::Reaction,
                ..record(7, "odd")
            };
            let mut batch = Batch::new();
            batch.message(1, 7, &reaction);
            for user in ["odd", "even", "third"] {
                batch.member_added("r", user, ReadRecord::default(), 1);
            }
            let schema_2 =
                |user: &str, seq: u64| KeyWrite::put(Cf::Reads, &keys::pair(user, "r"), &seq);
            let mut writes = batch.writes;
            writes.extend([
                schema_2("odd", 4),
                schema_2("even", 0),
                schema_2("third", 7),
            ]);
            writes.push(KeyWrite::put(Cf::Meta, keys::META_SCHEMA_VERSION, &2u32));
            storage.write(&writes, true).unwrap();
        }
        let storage = Storage::open(&config_at(dir.path())).unwrap();
        assert_eq!(storage.content_count(1).unwrap(), 6);
        let read = |user| storage.read_record(user, "r").unwrap().unwrap();
        // unread = content - own - base: odd read to 4 (2 of even's), 1 unread (seq 6).
        assert_eq!(
            read("odd"),
            ReadRecord {
                seq: 4,
                own: 3,
                base: 2
            }
        );
        assert_eq!(
            read("even"),
            ReadRecord {
                seq: 0,
                own: 3,
                base: 0
            }
        );
        assert_eq!(
            read("third"),
            ReadRecord {
                seq: 7,
                own: 0,
                base: 6
            }
        );
        // The route room is indexed at its last message; the direct room never.
        let entries = storage.idle_candidates(u64::MAX, 10).unwrap();
        assert_eq!(entries, [(7, "r".to_owned())]);
        assert_eq!(
            storage
                .get::<u32>(Cf::Meta, keys::META_SCHEMA_VERSION)
                .unwrap(),
            Some(3)
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(&config_at(dir.path())).unwrap();
            let newer = KeyWrite::put(Cf::Meta, keys::META_SCHEMA_VERSION, &(SCHEMA_VERSION + 1));
            storage.write(&[newer], true).unwrap();
        }
        assert!(matches!(
            Storage::open(&config_at(dir.path())),
            Err(StorageError::NewerSchema { .. })
        ));
    }

    #[test]
    fn unknown_record_versions_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&config_at(dir.path())).unwrap();
        let write = KeyWrite::Put(Cf::Rooms, b"r".to_vec(), vec![42, 0]);
        storage.write(&[write], true).unwrap();
        assert!(matches!(
            storage.rooms_after("", 10),
            Err(StorageError::UnknownFormat { version: 42, .. })
        ));
    }
}
