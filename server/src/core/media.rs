//! Media: chunked, resumable uploads checked against a SHA-256, ranged downloads, access control,
//! and expiry of uploads nothing uses.
//!
//! An upload belongs to its uploader's owner core, the one writer of its record and chunks, which
//! keeps in-progress uploads in memory (with a running SHA-256) so pipelined chunks see each
//! other before their batch commits. Chunks are stored under (media_id, offset) in a column family
//! kept in blob files. A message that attaches media records the pair (media, conversation) in
//! `media_refs`; the uploader and the current members of such conversations may read the media,
//! and to anyone else it does not exist. Downloads are single reads of at most one chunk's size,
//! so a large transfer is many small requests interleaved with everyone else's on the core.

use super::HashMap;

use ring::digest;
use tern_protocol::frames::{
    Download, GetMedia, MediaData, MediaInfo, UploadBegin, UploadChunk, UploadFinish, UploadState,
    UploadStatus,
};
use tern_protocol::limits::MEDIA_CHUNK_BYTES_MAX;
use tern_protocol::types::Attachment;
use tern_protocol::ErrorCode;

use super::reads::ReadJob;
use super::{ConnId, Shard};
use crate::store::records::MediaRecord;
use crate::store::{Store, StoreError, RANGE_READ_MAX};

/// An unfinished upload with no progress for this long is discarded (the spec's 24 hours).
pub(crate) const UPLOAD_STALE_MS: u64 = 24 * 3600 * 1000;
/// Unfinished uploads one user may have going at once.
pub(crate) const UPLOADS_PENDING_PER_USER_MAX: usize = 16;
/// Uploads in progress a core keeps in memory before it starts over.
const UPLOADS_IN_MEMORY_MAX: usize = 10_000;
/// Upload records the expiry sweep reads per run.
const SWEEP_RECORDS_MAX: usize = 10_000;

/// Uploads in progress on this core.
#[derive(Default)]
pub(crate) struct MediaState {
    uploads: HashMap<u64, (MediaRecord, digest::Context)>,
}

impl std::fmt::Debug for MediaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaState")
            .field("uploads", &self.uploads.len())
            .finish()
    }
}

impl MediaState {
    /// Drops finished uploads from memory, and everything when too many are in progress; only
    /// called right after a commit, so the store holds all of it.
    pub(crate) fn trim(&mut self) {
        self.uploads.retain(|_, (record, _)| !record.complete);
        if self.uploads.len() > UPLOADS_IN_MEMORY_MAX {
            self.uploads.clear();
        }
    }

    /// The pending batch was lost: in-progress uploads reload from the store.
    pub(crate) fn forget(&mut self) {
        self.uploads.clear();
    }
}

fn state(media_id: u64, record: &MediaRecord) -> UploadState {
    UploadState {
        media_id,
        size: record.size,
        received: record.received,
    }
}

fn info(media_id: u64, record: &MediaRecord) -> MediaInfo {
    MediaInfo {
        media_id,
        uploader: record.uploader,
        size: record.size,
        mime: record.mime.clone(),
        sha256: record.sha256,
        created_at: record.created_at,
        complete: record.complete,
    }
}

/// The attachment descriptions of a message's media ids (ids that no longer exist are left out).
pub(crate) fn attachments(store: &Store, ids: &[u64]) -> Vec<Attachment> {
    ids.iter()
        .filter_map(|&media_id| {
            let record = store.media(media_id).ok().flatten()?;
            Some(Attachment {
                media_id,
                size: record.size,
                mime: record.mime,
            })
        })
        .collect()
}

impl Shard {
    /// An upload of `user_id`'s, from memory or the store.
    fn own_upload(
        &mut self,
        user_id: u64,
        media_id: u64,
    ) -> Result<Option<&mut (MediaRecord, digest::Context)>, StoreError> {
        if !self.media.uploads.contains_key(&media_id) {
            let Some(record) = self
                .store
                .media(media_id)?
                .filter(|r| r.uploader == user_id)
            else {
                return Ok(None);
            };
            // After a restart the running hash is rebuilt from the stored chunks, once.
            let mut context = digest::Context::new(&digest::SHA256);
            if !record.complete {
                let mut bytes = Vec::new();
                self.store
                    .read_media(media_id, 0, record.received as usize, &mut bytes)?;
                context.update(&bytes);
            }
            self.media.uploads.insert(media_id, (record, context));
        }
        Ok(self
            .media
            .uploads
            .get_mut(&media_id)
            .filter(|(r, _)| r.uploader == user_id))
    }

    pub(crate) fn handle_upload_begin(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        begin: UploadBegin,
    ) -> Result<(), StoreError> {
        if begin.size == 0 || begin.mime.is_empty() {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "an upload needs a size and a media type",
            );
            return Ok(());
        }
        if begin.size > self.config.media_bytes_max {
            let message = format!(
                "uploads are limited to {} bytes",
                self.config.media_bytes_max
            );
            self.reply_error(conn, request_id, ErrorCode::MEDIA_TOO_LARGE, message);
            return Ok(());
        }
        let pending = self
            .media
            .uploads
            .values()
            .filter(|(r, _)| r.uploader == user_id && !r.complete)
            .count();
        if pending >= UPLOADS_PENDING_PER_USER_MAX {
            let message =
                format!("at most {UPLOADS_PENDING_PER_USER_MAX} unfinished uploads at once");
            self.reply_error(conn, request_id, ErrorCode::LIMIT_EXCEEDED, message);
            return Ok(());
        }
        let media_id = self.next_id(now_ms);
        let record = MediaRecord {
            uploader: user_id,
            size: begin.size,
            mime: begin.mime,
            sha256: begin.sha256,
            created_at: now_ms,
            received: 0,
            progressed_at: now_ms,
            complete: false,
            referenced: false,
        };
        self.batch.put_media(media_id, &record)?;
        self.reply_after_commit(conn, request_id, state(media_id, &record));
        self.media
            .uploads
            .insert(media_id, (record, digest::Context::new(&digest::SHA256)));
        Ok(())
    }

    pub(crate) fn handle_upload_status(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        status: UploadStatus,
    ) -> Result<(), StoreError> {
        match self.own_upload(user_id, status.media_id)? {
            Some((record, _)) => {
                let reply = state(status.media_id, record);
                self.reply_after_commit(conn, request_id, reply);
            }
            None => self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such upload"),
        }
        Ok(())
    }

    pub(crate) fn handle_upload_chunk(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        chunk: UploadChunk,
    ) -> Result<(), StoreError> {
        let media_id = chunk.media_id;
        let Some((record, context)) = self.own_upload(user_id, media_id)? else {
            self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such upload");
            return Ok(());
        };
        let refusal = if record.complete || chunk.offset != record.received {
            Some((
                ErrorCode::CONFLICT,
                "the offset must equal the bytes received so far",
            ))
        } else if chunk.data.is_empty() || record.received + chunk.data.len() as u64 > record.size {
            Some((
                ErrorCode::INVALID_ARGUMENT,
                "a chunk must hold 1 byte up to what is left of the upload",
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.reply_error(conn, request_id, code, message);
            return Ok(());
        }
        context.update(&chunk.data);
        record.received += chunk.data.len() as u64;
        record.progressed_at = now_ms;
        let record = record.clone();
        self.batch
            .put_media_chunk(media_id, chunk.offset, &chunk.data);
        self.batch.put_media(media_id, &record)?;
        self.reply_after_commit(conn, request_id, state(media_id, &record));
        Ok(())
    }

    pub(crate) fn handle_upload_finish(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        finish: UploadFinish,
    ) -> Result<(), StoreError> {
        let media_id = finish.media_id;
        let Some((record, context)) = self.own_upload(user_id, media_id)? else {
            self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such upload");
            return Ok(());
        };
        if record.complete {
            let reply = info(media_id, record);
            self.reply_after_commit(conn, request_id, reply);
            return Ok(());
        }
        if record.received < record.size {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::CONFLICT,
                "the upload is not complete",
            );
            return Ok(());
        }
        let matches = context.clone().finish().as_ref() == record.sha256;
        if !matches {
            self.media.uploads.remove(&media_id);
            self.batch.delete_media(media_id);
            self.reply_error(
                conn,
                request_id,
                ErrorCode::CHECKSUM_MISMATCH,
                "the bytes do not match the SHA-256; start again",
            );
            return Ok(());
        }
        record.complete = true;
        let record = record.clone();
        self.batch.put_media(media_id, &record)?;
        self.reply_after_commit(conn, request_id, info(media_id, &record));
        Ok(())
    }

    /// Whether `user_id` may read the media: its uploader, or a member of a conversation whose
    /// messages attach it.
    fn may_read(
        &self,
        user_id: u64,
        media_id: u64,
        record: &MediaRecord,
    ) -> Result<bool, StoreError> {
        if record.uploader == user_id {
            return Ok(true);
        }
        for conversation_id in self.store.media_refs(media_id, RANGE_READ_MAX)? {
            if self
                .store
                .conversation(conversation_id)?
                .is_some_and(|c| c.has_member(user_id))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The media's record if `user_id` may read it; otherwise `NOT_FOUND` was replied.
    fn readable(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        media_id: u64,
    ) -> Result<Option<MediaRecord>, StoreError> {
        let record = match self.store.media(media_id)? {
            Some(record) if self.may_read(user_id, media_id, &record)? => Some(record),
            _ => None,
        };
        if record.is_none() {
            self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such media");
        }
        Ok(record)
    }

    pub(crate) fn handle_get_media(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        get: GetMedia,
    ) -> Result<(), StoreError> {
        if let Some(record) = self.readable(conn, request_id, user_id, get.media_id)? {
            self.reply(conn, request_id, info(get.media_id, &record));
        }
        Ok(())
    }

    pub(crate) fn handle_download(
        &mut self,
        conn: ConnId,
        request_id: u32,
        user_id: u64,
        download: Download,
    ) -> Result<(), StoreError> {
        if download.length == 0 {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::INVALID_ARGUMENT,
                "length must be at least 1",
            );
            return Ok(());
        }
        if download.length > MEDIA_CHUNK_BYTES_MAX {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::LIMIT_EXCEEDED,
                "length is above media_chunk_bytes_max",
            );
            return Ok(());
        }
        let Some(record) = self.readable(conn, request_id, user_id, download.media_id)? else {
            return Ok(());
        };
        if !record.complete {
            self.reply_error(
                conn,
                request_id,
                ErrorCode::CONFLICT,
                "the upload is not complete",
            );
            return Ok(());
        }
        let end = record
            .size
            .min(download.offset.saturating_add(u64::from(download.length)));
        let length = end.saturating_sub(download.offset) as usize;
        let (media_id, offset) = (download.media_id, download.offset);
        // Read as a `Sync` page is (`core/reads.rs`) once the upload is complete in what is
        // durable (so are all its chunks: they were committed before, by the same core).
        if length > 0
            && self
                .committed
                .media(media_id)?
                .is_some_and(|durable| durable.complete)
        {
            let job = ReadJob::Media {
                media_id,
                offset,
                length,
            };
            return self.read_and_reply(conn, request_id, user_id, job);
        }
        let data = read_media(&self.store, media_id, offset, length)?;
        self.send_media_data(conn, request_id, media_id, offset, data)
    }

    /// Replies to a `Download` with the bytes read, unless the upload was discarded meanwhile (a
    /// reader's read may then have missed chunks): `NOT_FOUND` then.
    pub(crate) fn send_media_data(
        &mut self,
        conn: ConnId,
        request_id: u32,
        media_id: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        if self.store.media(media_id)?.is_none() {
            self.reply_error(conn, request_id, ErrorCode::NOT_FOUND, "no such media");
            return Ok(());
        }
        self.reply(
            conn,
            request_id,
            MediaData {
                media_id,
                offset,
                data,
            },
        );
        Ok(())
    }

    /// On the sender's core: checks that every attachment is a completed upload of the sender's,
    /// and marks it referenced so the expiry sweep keeps it. `false` when one is not.
    pub(crate) fn claim_attachments(
        &mut self,
        user_id: u64,
        ids: &[u64],
    ) -> Result<bool, StoreError> {
        for &media_id in ids {
            let Some((record, _)) = self.own_upload(user_id, media_id)? else {
                return Ok(false);
            };
            if !record.complete {
                return Ok(false);
            }
        }
        for &media_id in ids {
            if let Some((record, _)) = self.own_upload(user_id, media_id)? {
                if !record.referenced {
                    record.referenced = true;
                    let record = record.clone();
                    self.batch.put_media(media_id, &record)?;
                }
            }
        }
        Ok(true)
    }

    /// Discards uploads of this core's users that stalled unfinished, or that no message attached
    /// within the configured time.
    pub(crate) fn expire_media(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        let mut expired = 0;
        let mut after = 0;
        let mut read = 0;
        while read < SWEEP_RECORDS_MAX {
            let page = self.store.media_after(after, RANGE_READ_MAX)?;
            let Some(&(last, _)) = page.last() else { break };
            read += page.len();
            for (media_id, record) in page {
                if self.owner(record.uploader) != self.core {
                    continue;
                }
                let stale = !record.complete
                    && now_ms.saturating_sub(record.progressed_at) > UPLOAD_STALE_MS;
                let unused = record.complete
                    && !record.referenced
                    && now_ms.saturating_sub(record.created_at)
                        > self.config.media_unreferenced_ttl_ms;
                if stale || unused {
                    self.media.uploads.remove(&media_id);
                    self.batch.delete_media(media_id);
                    expired += 1;
                }
            }
            after = last;
        }
        Ok(expired)
    }
}

/// The bytes `[offset, offset + length)` of an upload (fewer at its end).
pub(crate) fn read_media(
    store: &Store,
    media_id: u64,
    offset: u64,
    length: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut data = Vec::with_capacity(length);
    if length > 0 {
        store.read_media(media_id, offset, length, &mut data)?;
    }
    Ok(data)
}
