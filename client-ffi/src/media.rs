//! Media upload and download with progress: [`TransferProgress`], a callback interface the app
//! implements, and the `upload`/`download` methods of [`Session`].
//!
//! The library's whole-file helpers do not report progress, so the chunk loops are here, built
//! on its per-chunk requests (`upload_begin`, `upload_chunk`, `upload_finish`, `get_media`,
//! `download_range`). Each chunk is at most the server's `media_chunk_bytes_max`; the callback is
//! called after each one (and once before the first), from a thread of the bindings' runtime, not
//! the app's UI thread or event loop.

use std::sync::Arc;

use tern_client::Client;
use tern_protocol::limits::MEDIA_CHUNK_BYTES_MAX;

use crate::error::{chain, ClientError};
use crate::runtime::run;
use crate::session::Session;
use crate::types::MediaInfo;

/// Told how far a transfer got. Called from a thread of the bindings: hand the numbers to the
/// UI thread or event loop rather than touching the UI here, and return quickly.
#[uniffi::export(with_foreign)]
pub trait TransferProgress: Send + Sync {
    /// `done_bytes` of `total_bytes` are transferred (both are 0 for an empty file).
    fn on_progress(&self, done_bytes: u64, total_bytes: u64);
}

/// The largest chunk the server takes, by its `Welcome`, within the protocol's maximum.
fn chunk_bytes(client: &Client) -> u64 {
    u64::from(
        client
            .welcome()
            .limits
            .media_chunk_bytes_max
            .clamp(1, MEDIA_CHUNK_BYTES_MAX),
    )
}

fn report(progress: &Option<Arc<dyn TransferProgress>>, done: u64, total: u64) {
    if let Some(progress) = progress {
        progress.on_progress(done, total);
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Uploads `data` in chunks, reporting after each.
async fn upload(
    client: &Client,
    data: &[u8],
    mime: &str,
    progress: &Option<Arc<dyn TransferProgress>>,
) -> Result<MediaInfo, ClientError> {
    let total = data.len() as u64;
    let chunk = chunk_bytes(client);
    let state = client.upload_begin(total, mime, sha256(data)).await?;
    let mut offset = state.received.min(total);
    report(progress, offset, total);
    // Bounded: every chunk moves the offset forward (checked), and there are total / chunk of them.
    while offset < total {
        let end = (offset + chunk).min(total);
        let bytes = data[offset as usize..end as usize].to_vec();
        let received = client
            .upload_chunk(state.media_id, offset, bytes)
            .await?
            .received;
        if received <= offset || received > total {
            return Err(ClientError::io(format!(
                "the server reported {received} bytes received after a chunk at {offset} of {total}"
            )));
        }
        offset = received;
        report(progress, offset, total);
    }
    Ok(client.upload_finish(state.media_id).await?.into())
}

/// Downloads a media item in chunks, reporting after each, and checks its size and SHA-256.
async fn download(
    client: &Client,
    media_id: u64,
    progress: &Option<Arc<dyn TransferProgress>>,
) -> Result<Vec<u8>, ClientError> {
    let info = client.get_media(media_id).await?;
    let total = info.size;
    let chunk = u32::try_from(chunk_bytes(client)).unwrap_or(MEDIA_CHUNK_BYTES_MAX);
    let mut data = Vec::with_capacity(usize::try_from(total.min(1 << 30)).unwrap_or(0));
    report(progress, 0, total);
    // Bounded: every turn adds at least one byte (an empty part ends it) up to `total`.
    while (data.len() as u64) < total {
        let part = client
            .download_range(media_id, data.len() as u64, chunk)
            .await?;
        if part.data.is_empty() {
            break;
        }
        data.extend_from_slice(&part.data);
        report(progress, (data.len() as u64).min(total), total);
    }
    if data.len() as u64 != total || sha256(&data) != info.sha256 {
        return Err(ClientError::io(
            "the downloaded bytes do not match the media's size and SHA-256",
        ));
    }
    Ok(data)
}

#[uniffi::export]
impl Session {
    /// Uploads `data` (of media type `mime`), reporting progress after each chunk. Attach the
    /// returned `media_id` to a message with `send_with_attachments`.
    pub async fn upload(
        &self,
        data: Vec<u8>,
        mime: String,
        progress: Option<Arc<dyn TransferProgress>>,
    ) -> Result<MediaInfo, ClientError> {
        let session = self.library();
        run(async move {
            let client = session.client().await?;
            upload(&client, &data, &mime, &progress).await
        })
        .await
    }

    /// Uploads the file at `path`, as [`Session::upload`].
    pub async fn upload_file(
        &self,
        path: String,
        mime: String,
        progress: Option<Arc<dyn TransferProgress>>,
    ) -> Result<MediaInfo, ClientError> {
        let session = self.library();
        run(async move {
            let client = session.client().await?;
            // The runtime has several threads: this one may block on the disk meanwhile.
            let data = tokio::task::block_in_place(|| std::fs::read(&path))
                .map_err(|e| ClientError::io(format!("{path}: {}", chain(&e))))?;
            upload(&client, &data, &mime, &progress).await
        })
        .await
    }

    /// Describes a media item the user may read.
    pub async fn get_media(&self, media_id: u64) -> Result<MediaInfo, ClientError> {
        let session = self.library();
        run(async move {
            let client = session.client().await?;
            Ok(client.get_media(media_id).await?.into())
        })
        .await
    }

    /// Downloads a whole media item, reporting progress after each chunk, and checks it against
    /// its SHA-256.
    pub async fn download(
        &self,
        media_id: u64,
        progress: Option<Arc<dyn TransferProgress>>,
    ) -> Result<Vec<u8>, ClientError> {
        let session = self.library();
        run(async move {
            let client = session.client().await?;
            download(&client, media_id, &progress).await
        })
        .await
    }

    /// Downloads a media item into the file at `path` (replaced if it exists), as
    /// [`Session::download`].
    pub async fn download_file(
        &self,
        media_id: u64,
        path: String,
        progress: Option<Arc<dyn TransferProgress>>,
    ) -> Result<(), ClientError> {
        let session = self.library();
        run(async move {
            let client = session.client().await?;
            let data = download(&client, media_id, &progress).await?;
            tokio::task::block_in_place(|| std::fs::write(&path, data))
                .map_err(|e| ClientError::io(format!("{path}: {}", chain(&e))))
        })
        .await
    }
}
