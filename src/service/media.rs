//! The media repository: uploads (direct and async), downloads and thumbnails of local
//! media, remote media fetched over federation and cached, and what the federation media
//! endpoints serve to other servers.
//!
//! Bytes live in content-addressed files (`storage::MediaFiles`, under
//! `<storage.path>/media/`), written and fsynced before the metadata that names them is
//! committed (`MediaStore`), so an acknowledged upload is durable and metadata never
//! points at a missing file. Thumbnails are generated once per (media, preset, method) and
//! stored the same way (see `thumbnail.rs` for the presets and the decoding limits).

mod thumbnail;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedMxcUri, OwnedServerName, ServerName, UInt, UserId,
    api::{
        error::ErrorKind,
        federation::authenticated_media::{self as federation_media, Content, ContentMetadata, FileOrLocation},
    },
    exports::http::StatusCode,
    http_headers::{ContentDisposition, ContentDispositionType},
};
use tokio::sync::{Notify, Semaphore};

pub use self::thumbnail::{Method, PRESETS};
use self::thumbnail::{ThumbnailError, choose_preset};
use super::{Core, federation::Federation, now_ms, random_token};
use crate::{
    config::LegacyMedia,
    error::{Error, Result},
    storage::{FillOutcome, MediaFiles, MediaRecord, ThumbnailRecord},
};

/// Longest wait for an async upload to be filled, whatever `timeout_ms` a client asks for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Room for the multipart framing and metadata around a remote file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// Thumbnails generated at once (each one is a decode + resize on the blocking pool).
const THUMBNAIL_WORKERS: usize = 2;

/// Content types a browser may render inline from our origin: images (not SVG, which
/// can carry script), audio, video and plain text. Anything else is an attachment.
const INLINE_CONTENT_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// How a download or thumbnail request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `/_matrix/client/v1/media/*` with an access token: remote media is fetched.
    Authenticated,
    /// The old unauthenticated `/_matrix/media/{r0,v3}/*`: as `media.legacy_unauthenticated` says.
    Legacy,
}

/// Bytes to serve with their headers.
pub struct MediaContent {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub disposition: ContentDisposition,
}

pub struct Media {
    core: Arc<Core>,
    federation: Arc<Federation>,
    files: MediaFiles,
    /// Woken whenever an async upload is filled (downloads waiting for it re-check).
    uploaded: Notify,
    thumbnail_workers: Semaphore,
    /// One fetch per remote media at a time: a second request waits and reads the cache.
    remote_fetches: Mutex<HashMap<(OwnedServerName, String), Arc<tokio::sync::Mutex<()>>>>,
}

/// Media ids are `[A-Za-z0-9_-]` (ours are random); anything else cannot exist.
fn valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn not_yet_uploaded() -> Error {
    Error::WithStatus {
        kind: ErrorKind::NotYetUploaded,
        message: "The media has not been uploaded yet.".into(),
        status: StatusCode::GATEWAY_TIMEOUT,
    }
}

fn no_such_media() -> Error {
    Error::not_found("Media not found.")
}

/// A stored content type that is safe to put in a header; octet-stream otherwise.
fn served_content_type(stored: Option<&str>) -> String {
    match stored {
        Some(value) if !value.is_empty() && value.bytes().all(|b| (0x20..0x7f).contains(&b)) => value.to_owned(),
        _ => "application/octet-stream".to_owned(),
    }
}

/// `inline` for the types in `INLINE_CONTENT_TYPES`, `attachment` for the rest.
pub fn disposition_for(content_type: &str, filename: Option<String>) -> ContentDisposition {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = if INLINE_CONTENT_TYPES.contains(&essence.as_str()) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    ContentDisposition::new(kind).with_filename(filename.filter(|name| !name.is_empty()))
}

impl Media {
    pub fn new(core: Arc<Core>, federation: Arc<Federation>) -> Self {
        let files = MediaFiles::new(core.config.storage.path.join("media"));
        Self {
            core,
            federation,
            files,
            uploaded: Notify::new(),
            thumbnail_workers: Semaphore::new(THUMBNAIL_WORKERS),
            remote_fetches: Mutex::default(),
        }
    }

    /// The largest upload accepted (`m.upload.size`).
    pub fn upload_size(&self) -> UInt {
        UInt::new_saturating(self.core.config.media.max_upload_size as u64)
    }

    /// `m.upload.size` for the legacy `/_matrix/media/v3/config`, unless those endpoints are off.
    pub fn legacy_upload_size(&self) -> Result<UInt> {
        match self.core.config.media.legacy_unauthenticated {
            LegacyMedia::Off => Err(Error::not_found("The unauthenticated media endpoints are disabled.")),
            LegacyMedia::Local => Ok(self.upload_size()),
        }
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        format!("mxc://{}/{media_id}", self.core.server_name()).into()
    }

    fn check_size(&self, bytes: &[u8]) -> Result<()> {
        let limit = self.core.config.media.max_upload_size;
        if bytes.len() > limit {
            return Err(Error::too_large(format!("Uploads are limited to {limit} bytes.")));
        }
        Ok(())
    }

    /// Writes the content file (durably, on the blocking pool); returns its SHA-256.
    async fn store_file(&self, bytes: Vec<u8>) -> Result<String> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || files.write(&bytes))
            .await
            .map_err(|e| Error::internal(format!("media write task failed: {e}")))?
            .map_err(Error::from)
    }

    async fn read_file(&self, sha256: &str) -> Result<Vec<u8>> {
        let files = self.files.clone();
        let sha = sha256.to_owned();
        let found = tokio::task::spawn_blocking(move || files.read(&sha))
            .await
            .map_err(|e| Error::internal(format!("media read task failed: {e}")))??;
        found.ok_or_else(|| Error::internal(format!("media file {sha256} is missing")))
    }

    /// `POST /_matrix/media/v3/upload`: stores the content, returns its new mxc URI.
    pub async fn upload(
        &self,
        user: &UserId,
        bytes: Vec<u8>,
        filename: Option<String>,
        content_type: Option<String>,
    ) -> Result<OwnedMxcUri> {
        self.check_size(&bytes)?;
        let size = bytes.len() as u64;
        let sha256 = self.store_file(bytes).await?;
        let media_id = random_token(32);
        let record = MediaRecord {
            sha256: Some(sha256),
            size,
            content_type,
            filename,
            uploader: Some(user.to_owned()),
            created_ts: now_ms(),
            unused_expires_ts: None,
        };
        let server = self.core.config.server_name.clone();
        let id = media_id.clone();
        self.core.blocking(move |db| Ok(db.put_media(&server, &id, &record)?)).await?;
        Ok(self.mxc(&media_id))
    }

    /// `POST /_matrix/media/v1/create`: reserves an mxc URI to be filled by `fill`.
    pub async fn create(&self, user: &UserId) -> Result<(OwnedMxcUri, MilliSecondsSinceUnixEpoch)> {
        let now = now_ms();
        let expires = now + self.core.config.media.unused_expiry_ms;
        let media_id = random_token(32);
        let record = MediaRecord {
            sha256: None,
            size: 0,
            content_type: None,
            filename: None,
            uploader: Some(user.to_owned()),
            created_ts: now,
            unused_expires_ts: Some(expires),
        };
        let max = self.core.config.media.max_pending_uploads;
        let server = self.core.config.server_name.clone();
        let id = media_id.clone();
        let reserved = self.core.blocking(move |db| Ok(db.reserve_media(&server, &id, &record, max, now)?)).await?;
        if !reserved {
            return Err(Error::limit_exceeded(Duration::from_secs(60)));
        }
        Ok((self.mxc(&media_id), MilliSecondsSinceUnixEpoch(UInt::new_saturating(expires))))
    }

    /// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: fills a reserved id, once,
    /// by the user who reserved it.
    pub async fn fill(
        &self,
        user: &UserId,
        server: &ServerName,
        media_id: &str,
        bytes: Vec<u8>,
        filename: Option<String>,
        content_type: Option<String>,
    ) -> Result<()> {
        if server != self.core.server_name() || !valid_media_id(media_id) {
            return Err(no_such_media());
        }
        self.check_size(&bytes)?;
        // A cheap look first, so a refused upload writes no file; `fill_media` decides.
        let existing = self.record(server, media_id).await?.ok_or_else(no_such_media)?;
        match existing.uploader.as_deref() {
            Some(uploader) if uploader == user => {}
            Some(_) => return Err(Error::forbidden("This media id was created by another user.")),
            None => return Err(no_such_media()),
        }
        if !existing.is_pending() {
            return Err(cannot_overwrite());
        }
        let size = bytes.len() as u64;
        let sha256 = self.store_file(bytes).await?;
        let record = MediaRecord {
            sha256: Some(sha256),
            size,
            content_type,
            filename,
            uploader: Some(user.to_owned()),
            created_ts: now_ms(),
            unused_expires_ts: None,
        };
        let (server, id, uploader) = (server.to_owned(), media_id.to_owned(), user.to_owned());
        let outcome =
            self.core.blocking(move |db| Ok(db.fill_media(&server, &id, &uploader, &record, now_ms())?)).await?;
        match outcome {
            FillOutcome::Filled => {
                self.uploaded.notify_waiters();
                Ok(())
            }
            FillOutcome::Unknown => Err(no_such_media()),
            FillOutcome::NotYours => Err(Error::forbidden("This media id was created by another user.")),
            FillOutcome::AlreadyFilled => Err(cannot_overwrite()),
        }
    }

    async fn record(&self, server: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        let (server, id) = (server.to_owned(), media_id.to_owned());
        self.core.blocking(move |db| Ok(db.media(&server, &id)?)).await
    }

    /// A local record with content, waiting up to `timeout` for a pending async upload.
    async fn local_record(&self, media_id: &str, timeout: Duration) -> Result<MediaRecord> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let server = self.core.config.server_name.clone();
        loop {
            // Registered before the look, so a fill between the look and the wait still wakes us.
            let notified = self.uploaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let record = self.record(&server, media_id).await?.ok_or_else(no_such_media)?;
            if !record.is_pending() {
                return Ok(record);
            }
            if record.unused_expires_ts.is_some_and(|expires| expires <= now_ms()) {
                return Err(no_such_media());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(not_yet_uploaded());
            }
        }
    }

    /// The record of any media (local, cached remote, or fetched now), as `access` allows.
    async fn resolve(
        &self,
        server: &ServerName,
        media_id: &str,
        timeout: Duration,
        access: Access,
    ) -> Result<MediaRecord> {
        if !valid_media_id(media_id) {
            return Err(no_such_media());
        }
        let media = &self.core.config.media;
        if access == Access::Legacy && media.legacy_unauthenticated == LegacyMedia::Off {
            return Err(Error::not_found(
                "The unauthenticated media endpoints are disabled; use /_matrix/client/v1/media.",
            ));
        }
        let record = if server == self.core.server_name() {
            self.local_record(media_id, timeout).await?
        } else {
            match self.record(server, media_id).await? {
                Some(record) if !record.is_pending() => record,
                _ if access == Access::Legacy => return Err(no_such_media()),
                _ => self.fetch_remote(server, media_id, timeout).await?,
            }
        };
        if access == Access::Legacy
            && let Some(frozen) = media.legacy_frozen_after_ms
            && record.created_ts >= frozen
        {
            return Err(Error::not_found(
                "Media created after the freeze is served only through /_matrix/client/v1/media.",
            ));
        }
        Ok(record)
    }

    /// Fetches remote media over federation and caches it (file, then metadata).
    async fn fetch_remote(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<MediaRecord> {
        self.federation.check_permitted(server)?;
        let key = (server.to_owned(), media_id.to_owned());
        let lock =
            self.remote_fetches.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let result = async {
            let _guard = lock.lock().await;
            // Another request may have fetched it while we waited for the lock.
            if let Some(record) = self.record(server, media_id).await?
                && !record.is_pending()
            {
                return Ok(record);
            }
            let mut request = federation_media::get_content::v1::Request::new(media_id.to_owned());
            request.timeout_ms = timeout.min(MAX_WAIT);
            let max = self.core.config.media.max_remote_size as u64;
            let response = self
                .federation
                .client
                .send_limited(server, request, max + MULTIPART_OVERHEAD)
                .await
                .map_err(remote_media_error)?;
            let content = match response.content {
                FileOrLocation::File(content) => content,
                // NOTSPEC-adjacent: the spec allows a redirect; we do not follow it (no
                // server we federate with sends one, and following it means an unsigned
                // fetch from an arbitrary URL).
                _ => {
                    return Err(Error::remote_media(
                        "the other server answered with a redirect, which ieum does not follow",
                    ));
                }
            };
            if content.file.len() as u64 > max {
                return Err(Error::too_large("The remote media is larger than this server accepts."));
            }
            let size = content.file.len() as u64;
            let filename = content.content_disposition.as_ref().and_then(|d| d.filename.clone());
            let sha256 = self.store_file(content.file).await?;
            let record = MediaRecord {
                sha256: Some(sha256),
                size,
                content_type: content.content_type,
                filename,
                uploader: None,
                created_ts: now_ms(),
                unused_expires_ts: None,
            };
            let (stored_server, id, stored) = (server.to_owned(), media_id.to_owned(), record.clone());
            self.core.blocking(move |db| Ok(db.put_media(&stored_server, &id, &stored)?)).await?;
            Ok(record)
        }
        .await;
        let mut fetches = self.remote_fetches.lock().unwrap_or_else(|e| e.into_inner());
        if fetches.get(&key).is_some_and(|held| Arc::strong_count(held) <= 2) {
            fetches.remove(&key);
        }
        result
    }

    /// Download: the content with its type and disposition (`filename` from the URL path
    /// overrides the stored one).
    pub async fn download(
        &self,
        server: &ServerName,
        media_id: &str,
        filename: Option<String>,
        timeout: Duration,
        access: Access,
    ) -> Result<MediaContent> {
        let record = self.resolve(server, media_id, timeout, access).await?;
        let sha256 = record.sha256.as_deref().ok_or_else(no_such_media)?;
        let bytes = self.read_file(sha256).await?;
        let content_type = served_content_type(record.content_type.as_deref());
        let disposition = disposition_for(&content_type, filename.or(record.filename));
        Ok(MediaContent { bytes, content_type, disposition })
    }

    /// A thumbnail of at least `width` x `height` (the covering preset), generated once.
    #[allow(clippy::too_many_arguments)]
    pub async fn thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        width: UInt,
        height: UInt,
        method: Method,
        timeout: Duration,
        access: Access,
    ) -> Result<MediaContent> {
        let (Ok(width), Ok(height)) = (u32::try_from(u64::from(width)), u32::try_from(u64::from(height))) else {
            return Err(Error::invalid_param("Thumbnail width and height must be small positive integers."));
        };
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("Thumbnail width and height must be positive."));
        }
        let record = self.resolve(server, media_id, timeout, access).await?;
        let (width, height) = choose_preset(width, height);
        let thumbnail = self.stored_or_new_thumbnail(server, media_id, &record, width, height, method).await?;
        let bytes = self.read_file(&thumbnail.sha256).await?;
        let extension = if thumbnail.content_type == "image/jpeg" { "jpg" } else { "png" };
        let disposition = disposition_for(&thumbnail.content_type, Some(format!("thumbnail.{extension}")));
        Ok(MediaContent { bytes, content_type: thumbnail.content_type, disposition })
    }

    /// The stored thumbnail for (media, preset, method), or a new one generated and stored.
    async fn stored_or_new_thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        record: &MediaRecord,
        width: u32,
        height: u32,
        method: Method,
    ) -> Result<ThumbnailRecord> {
        let (key_server, id) = (server.to_owned(), media_id.to_owned());
        let stored =
            self.core.blocking(move |db| Ok(db.thumbnail(&key_server, &id, method.as_str(), width, height)?)).await?;
        if let Some(stored) = stored {
            return Ok(stored);
        }
        let sha256 = record.sha256.as_deref().ok_or_else(no_such_media)?;
        let source = self.read_file(sha256).await?;
        let max_pixels = self.core.config.media.max_thumbnail_pixels;
        let _worker = self.thumbnail_workers.acquire().await.map_err(|_| Error::internal("thumbnailer closed"))?;
        let generated =
            tokio::task::spawn_blocking(move || thumbnail::generate(&source, width, height, method, max_pixels))
                .await
                .map_err(|e| Error::internal(format!("thumbnail task failed: {e}")))?;
        let generated = generated.map_err(|error| match error {
            ThumbnailError::Unsupported => Error::unknown("Cannot generate a thumbnail of this type of media."),
            ThumbnailError::TooLarge { width, height } => {
                Error::too_large(format!("The image ({width}x{height}) is too large to thumbnail."))
            }
            ThumbnailError::Undecodable(detail) => {
                tracing::debug!(%detail, "undecodable image");
                Error::unknown("Cannot generate a thumbnail: the image does not decode.")
            }
        })?;
        let size = generated.bytes.len() as u64;
        let sha256 = self.store_file(generated.bytes).await?;
        let thumbnail = ThumbnailRecord {
            method: method.as_str().to_owned(),
            width,
            height,
            sha256,
            size,
            content_type: generated.content_type.to_owned(),
            created_ts: now_ms(),
        };
        let (key_server, id, stored) = (server.to_owned(), media_id.to_owned(), thumbnail.clone());
        self.core.blocking(move |db| Ok(db.put_thumbnail(&key_server, &id, &stored)?)).await?;
        Ok(thumbnail)
    }

    /// Every stored thumbnail of a piece of media (tests and admin views).
    pub async fn thumbnails(&self, server: &ServerName, media_id: &str) -> Result<Vec<ThumbnailRecord>> {
        let (server, id) = (server.to_owned(), media_id.to_owned());
        self.core.blocking(move |db| Ok(db.thumbnails(&server, &id)?)).await
    }

    /// `GET /_matrix/federation/v1/media/download/{mediaId}`: our own media, for another server.
    pub async fn federation_download(
        &self,
        media_id: &str,
        timeout: Duration,
    ) -> Result<(ContentMetadata, FileOrLocation)> {
        let server = self.core.config.server_name.clone();
        let content = self.download(&server, media_id, None, timeout, Access::Authenticated).await?;
        Ok((
            ContentMetadata::new(),
            FileOrLocation::File(Content::new(content.bytes, content.content_type, content.disposition)),
        ))
    }

    /// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`: a thumbnail of our own media.
    pub async fn federation_thumbnail(
        &self,
        media_id: &str,
        width: UInt,
        height: UInt,
        method: Method,
        timeout: Duration,
    ) -> Result<(ContentMetadata, FileOrLocation)> {
        let server = self.core.config.server_name.clone();
        let content = self.thumbnail(&server, media_id, width, height, method, timeout, Access::Authenticated).await?;
        Ok((
            ContentMetadata::new(),
            FileOrLocation::File(Content::new(content.bytes, content.content_type, content.disposition)),
        ))
    }
}

fn cannot_overwrite() -> Error {
    Error::WithStatus {
        kind: ErrorKind::CannotOverwriteMedia,
        message: "This media has already been uploaded.".into(),
        status: StatusCode::CONFLICT,
    }
}

/// A remote server's 404 is the client's 404; other failures are a 502 naming the server.
fn remote_media_error(error: ieum_federation::client::FederationError) -> Error {
    use ieum_federation::client::FederationError;
    match error {
        FederationError::Remote { status: 404, .. } => no_such_media(),
        other => Error::remote(other),
    }
}

impl Error {
    /// A remote server gave an answer about media that we cannot use (502).
    fn remote_media(detail: &str) -> Self {
        Self::WithStatus {
            kind: ErrorKind::Unknown,
            message: format!("Could not fetch the remote media: {detail}"),
            status: StatusCode::BAD_GATEWAY,
        }
    }
}
