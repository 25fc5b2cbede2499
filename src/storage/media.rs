//! The media repository's persistence: `MediaStore` (metadata of uploads, remote copies and
//! thumbnails, in the database) and `MediaFiles` (the bytes, content-addressed files on disk).
//!
//! Order of writes: a file is written and fsynced (file and directory) before its metadata
//! is committed, so metadata never names a missing file; a crash in between leaves an
//! orphan file, which is harmless (the same bytes uploaded again reuse it).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};

use super::{Result, StorageError};

/// One piece of media, local or a cached remote copy, keyed by (server name, media id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// SHA-256 of the content (hex), naming its file; None while an async upload is pending.
    pub sha256: Option<String>,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// The local user who uploaded (or reserved) it; None for remote media.
    pub uploader: Option<OwnedUserId>,
    pub created_ts: u64,
    /// For a pending async upload: when the reserved id stops being usable.
    pub unused_expires_ts: Option<u64>,
}

impl MediaRecord {
    pub fn is_pending(&self) -> bool {
        self.sha256.is_none()
    }
}

/// A generated thumbnail of a piece of media, keyed by (server, media id, method, size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    /// "scale" or "crop": the method it was generated with.
    pub method: String,
    /// The preset size asked for (the image itself may be smaller for `scale`).
    pub width: u32,
    pub height: u32,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub created_ts: u64,
}

/// What became of a request to fill a reserved (async upload) media id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillOutcome {
    Filled,
    /// No such reservation (never made, or expired).
    Unknown,
    /// Reserved by another user.
    NotYours,
    /// Already uploaded.
    AlreadyFilled,
}

/// Media metadata. Every method is one atomic, durable write (or a read).
pub trait MediaStore: Send + Sync {
    fn media(&self, server: &ServerName, media_id: &str) -> Result<Option<MediaRecord>>;
    /// Stores a complete record (a direct upload or a remote copy); replaces what was there.
    fn put_media(&self, server: &ServerName, media_id: &str, record: &MediaRecord) -> Result<()>;
    /// Reserves `media_id` (local) for `record.uploader` unless that user already holds
    /// `max_pending` reservations unexpired at `now`; false when over the limit.
    fn reserve_media(
        &self,
        server: &ServerName,
        media_id: &str,
        record: &MediaRecord,
        max_pending: usize,
        now: u64,
    ) -> Result<bool>;
    /// Fills a reservation with uploaded content, once, by the user who reserved it.
    fn fill_media(
        &self,
        server: &ServerName,
        media_id: &str,
        uploader: &UserId,
        record: &MediaRecord,
        now: u64,
    ) -> Result<FillOutcome>;
    fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        method: &str,
        width: u32,
        height: u32,
    ) -> Result<Option<ThumbnailRecord>>;
    fn put_thumbnail(&self, server: &ServerName, media_id: &str, thumbnail: &ThumbnailRecord) -> Result<()>;
    /// Every thumbnail stored for one piece of media.
    fn thumbnails(&self, server: &ServerName, media_id: &str) -> Result<Vec<ThumbnailRecord>>;
}

/// Content-addressed files: `<root>/ab/cd/abcdef...` named by SHA-256 (two-level fan-out,
/// so no directory grows past a few thousand entries).
#[derive(Clone, Debug)]
pub struct MediaFiles {
    root: PathBuf,
}

fn io(what: &str, path: &Path, error: std::io::Error) -> StorageError {
    StorageError::Backend(format!("media file {what} {}: {error}", path.display()))
}

impl MediaFiles {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The SHA-256 of `bytes`, in lower-case hex.
    pub fn digest(bytes: &[u8]) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        // Only our own hex digests name files: nothing else may reach the file system.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return None;
        }
        Some(self.root.join(&sha256[0..2]).join(&sha256[2..4]).join(sha256))
    }

    /// Writes `bytes` durably (temp file, write, fsync, rename, fsync the directory) and
    /// returns their SHA-256. Content already stored is not written again.
    pub fn write(&self, bytes: &[u8]) -> Result<String> {
        let sha256 = Self::digest(bytes);
        let path = self.path_of(&sha256).expect("our own digest is valid");
        if path.exists() {
            return Ok(sha256);
        }
        let dir = path.parent().expect("fan-out directory");
        std::fs::create_dir_all(dir).map_err(|e| io("directory", dir, e))?;
        let temp = dir.join(format!(".{sha256}.{}.tmp", crate::service::random_token(8)));
        let result = (|| {
            let mut file = std::fs::File::create(&temp).map_err(|e| io("create", &temp, e))?;
            file.write_all(bytes).map_err(|e| io("write", &temp, e))?;
            file.sync_all().map_err(|e| io("fsync", &temp, e))?;
            std::fs::rename(&temp, &path).map_err(|e| io("rename", &path, e))?;
            // The rename is durable only once the directory entry is.
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("fsync", dir, e))?;
            // New fan-out directories need their parents synced too.
            for parent in [dir.parent(), dir.parent().and_then(Path::parent)].into_iter().flatten() {
                std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| io("fsync", parent, e))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map(|()| sha256)
    }

    /// The bytes of a stored file (None if it is missing).
    pub fn read(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.path_of(sha256) else { return Ok(None) };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_content_addressed_and_fanned_out() {
        let dir = tempfile::tempdir().unwrap();
        let files = MediaFiles::new(dir.path().join("media"));
        let sha = files.write(b"hello").unwrap();
        assert_eq!(sha, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(dir.path().join("media/2c/f2").join(&sha).is_file());
        assert_eq!(files.write(b"hello").unwrap(), sha);
        assert_eq!(files.read(&sha).unwrap().unwrap(), b"hello");
        assert_eq!(files.read(&"0".repeat(64)).unwrap(), None);
        assert_eq!(files.read("../../etc/passwd").unwrap(), None);
        // No temp files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("media/2c/f2")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
