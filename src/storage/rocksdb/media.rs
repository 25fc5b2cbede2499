//! The media repository's metadata on RocksDB: media records (MEDIA), reservations of async
//! uploads per user (MEDIA_PENDING) and generated thumbnails (MEDIA_THUMBNAILS); see
//! schema.rs for the key layouts. The files themselves are `storage::MediaFiles`.

use ::rocksdb::{IteratorMode, WriteBatch};
use ruma::{ServerName, UserId};

use super::{RocksStorage, backend, decode, encode, keys, schema as cf};
use crate::storage::{
    Result,
    media::{FillOutcome, MediaRecord, MediaStore, ThumbnailRecord},
};

impl MediaStore for RocksStorage {
    fn media(&self, server: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        self.get_json(cf::MEDIA, &keys::join(&[server.as_bytes(), media_id.as_bytes()]))
    }

    fn put_media(&self, server: &ServerName, media_id: &str, record: &MediaRecord) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::MEDIA), keys::join(&[server.as_bytes(), media_id.as_bytes()]), encode(record));
        self.write(batch)
    }

    fn reserve_media(
        &self,
        server: &ServerName,
        media_id: &str,
        record: &MediaRecord,
        max_pending: usize,
        now: u64,
    ) -> Result<bool> {
        let Some(uploader) = &record.uploader else { return Ok(false) };
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        let user_prefix = keys::prefix(uploader.as_bytes());
        let mut live = 0;
        for item in self
            .db
            .iterator_cf(self.cf(cf::MEDIA_PENDING), IteratorMode::From(&user_prefix, ::rocksdb::Direction::Forward))
        {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&user_prefix) {
                break;
            }
            let expires = keys::trailing_u64(&value).unwrap_or(0);
            if expires <= now {
                // An expired reservation is forgotten here (its id can no longer be filled).
                batch.delete_cf(self.cf(cf::MEDIA_PENDING), &key);
            } else {
                live += 1;
            }
        }
        if live >= max_pending {
            self.write(batch)?;
            return Ok(false);
        }
        let expires = record.unused_expires_ts.unwrap_or(u64::MAX);
        batch.put_cf(self.cf(cf::MEDIA), keys::join(&[server.as_bytes(), media_id.as_bytes()]), encode(record));
        batch.put_cf(
            self.cf(cf::MEDIA_PENDING),
            keys::join(&[uploader.as_bytes(), media_id.as_bytes()]),
            keys::u64_key(expires),
        );
        self.write(batch)?;
        Ok(true)
    }

    fn fill_media(
        &self,
        server: &ServerName,
        media_id: &str,
        uploader: &UserId,
        record: &MediaRecord,
        now: u64,
    ) -> Result<FillOutcome> {
        let _guard = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = keys::join(&[server.as_bytes(), media_id.as_bytes()]);
        let Some(existing) = self.get_json::<MediaRecord>(cf::MEDIA, &key)? else { return Ok(FillOutcome::Unknown) };
        if existing.uploader.as_deref() != Some(uploader) {
            return Ok(if existing.uploader.is_none() { FillOutcome::Unknown } else { FillOutcome::NotYours });
        }
        if !existing.is_pending() {
            return Ok(FillOutcome::AlreadyFilled);
        }
        if existing.unused_expires_ts.is_some_and(|expires| expires <= now) {
            return Ok(FillOutcome::Unknown);
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf::MEDIA), &key, encode(record));
        batch.delete_cf(self.cf(cf::MEDIA_PENDING), keys::join(&[uploader.as_bytes(), media_id.as_bytes()]));
        self.write(batch)?;
        Ok(FillOutcome::Filled)
    }

    fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        method: &str,
        width: u32,
        height: u32,
    ) -> Result<Option<ThumbnailRecord>> {
        self.get_json(cf::MEDIA_THUMBNAILS, &thumbnail_key(server, media_id, method, width, height))
    }

    fn put_thumbnail(&self, server: &ServerName, media_id: &str, thumbnail: &ThumbnailRecord) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(cf::MEDIA_THUMBNAILS),
            thumbnail_key(server, media_id, &thumbnail.method, thumbnail.width, thumbnail.height),
            encode(thumbnail),
        );
        self.write(batch)
    }

    fn thumbnails(&self, server: &ServerName, media_id: &str) -> Result<Vec<ThumbnailRecord>> {
        let media_prefix = keys::prefix(&keys::join(&[server.as_bytes(), media_id.as_bytes()]));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(cf::MEDIA_THUMBNAILS),
            IteratorMode::From(&media_prefix, ::rocksdb::Direction::Forward),
        ) {
            let (key, value) = item.map_err(backend)?;
            if !key.starts_with(&media_prefix) {
                break;
            }
            out.push(decode(cf::MEDIA_THUMBNAILS, &value)?);
        }
        Ok(out)
    }
}

/// `server 0xFF media_id 0xFF method 0xFF width u32 ++ height u32` (big-endian).
fn thumbnail_key(server: &ServerName, media_id: &str, method: &str, width: u32, height: u32) -> Vec<u8> {
    let mut key = keys::join(&[server.as_bytes(), media_id.as_bytes(), method.as_bytes(), b""]);
    key.extend_from_slice(&width.to_be_bytes());
    key.extend_from_slice(&height.to_be_bytes());
    key
}
