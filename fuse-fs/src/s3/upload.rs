//! New files written sequentially, uploaded while they are written.
//!
//! Bytes accumulate into parts; each full part is sent as a multipart
//! UploadPart in the background, so a large file is mostly uploaded when it
//! is closed. Close (flush) completes the upload and reports its error, which
//! is where a user can see it. A file smaller than one part becomes a single
//! PutObject. Writes that are not at the end of what was written are refused.
//!
//! Every close of any copy of the descriptor is a FLUSH, including the
//! kernel closing the copies a child inherited when it calls `exec` (every
//! `subprocess`, every `Command::spawn` of a writer's other thread). So only
//! a FLUSH from the process that opened the file completes the upload (as
//! Mountpoint does); one from another process is ignored, and the last close
//! (RELEASE) completes whatever is left.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::error::{FsError, ObjectError};
use super::store::{ObjectStore, UploadedPart};

/// S3 refuses parts below 5 MiB (except the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Parts in flight at once per file; bounds the memory of a writer.
const MAX_IN_FLIGHT: usize = 4;

type PartTask = JoinHandle<Result<UploadedPart, ObjectError>>;

/// An upload in progress.
#[derive(Debug)]
pub struct Upload<S> {
    store: Arc<S>,
    bucket: String,
    key: String,
    part_size: u64,
    upload_id: Option<String>,
    buf: BytesMut,
    written: u64,
    next_part: i32,
    in_flight: Vec<PartTask>,
    done_parts: Vec<UploadedPart>,
    finished: bool,
    failed: Option<ObjectError>,
    /// The process (thread group id) that opened the file; 0 when unknown.
    opener: u32,
}

/// The process (thread group) of the thread `tid` a FUSE request names;
/// `None` when it cannot be told (0: the caller is outside the server's
/// PID namespace, or it is gone).
pub fn process_of(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

impl<S: ObjectStore> Upload<S> {
    pub fn new(store: Arc<S>, bucket: String, key: String, part_size: u64) -> Self {
        Self {
            store,
            bucket,
            key,
            part_size: part_size.max(MIN_PART_SIZE),
            upload_id: None,
            buf: BytesMut::new(),
            written: 0,
            next_part: 1,
            in_flight: Vec::new(),
            done_parts: Vec::new(),
            finished: false,
            failed: None,
            opener: 0,
        }
    }

    /// Remembers which process opened the file (the [`process_of`] the
    /// thread of the CREATE or OPEN request).
    pub fn opened_by(&mut self, process: Option<u32>) {
        self.opener = process.unwrap_or(0);
    }

    /// Whether a FLUSH from thread `tid` is the opener closing the file
    /// (true when either side cannot be told: the upload completes at
    /// close, as it always did).
    pub fn closed_by_opener(&self, tid: u32) -> bool {
        if self.opener == 0 {
            return true;
        }
        process_of(tid).is_none_or(|p| p == self.opener)
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.written
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        if self.finished {
            return Err(FsError::Unsupported(
                "write after close of an uploaded file",
            ));
        }
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        if offset != self.written {
            tracing::warn!(
                key = self.key,
                offset,
                expected = self.written,
                "refusing non-sequential write: S3 objects are written once, front to back"
            );
            return Err(FsError::Unsupported("random write"));
        }
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        while self.buf.len() as u64 >= self.part_size {
            let part = self.buf.split_to(self.part_size as usize).freeze();
            self.send_part(part).await?;
        }
        Ok(data.len() as u32)
    }

    async fn send_part(&mut self, body: Bytes) -> Result<(), FsError> {
        if self.upload_id.is_none() {
            let id = self.store.create_multipart(&self.bucket, &self.key).await?;
            self.upload_id = Some(id);
        }
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            let oldest = self.in_flight.remove(0);
            self.settle(oldest).await?;
        }
        let store = self.store.clone();
        let (bucket, key) = (self.bucket.clone(), self.key.clone());
        let id = self.upload_id.clone().unwrap_or_default();
        let number = self.next_part;
        self.next_part += 1;
        self.in_flight.push(tokio::spawn(async move {
            store.upload_part(&bucket, &key, &id, number, body).await
        }));
        Ok(())
    }

    async fn settle(&mut self, task: PartTask) -> Result<(), FsError> {
        let result = task
            .await
            .unwrap_or_else(|e| Err(ObjectError::Other(format!("upload task: {e}"))));
        match result {
            Ok(p) => {
                self.done_parts.push(p);
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e.into())
            }
        }
    }

    /// Completes the upload; the object exists afterwards or the error says why.
    pub async fn finish(&mut self) -> Result<(), FsError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let result = self.finish_inner().await;
        if result.is_err() {
            if let Some(id) = self.upload_id.take() {
                for t in self.in_flight.drain(..) {
                    t.abort();
                }
                if let Err(e) = self
                    .store
                    .abort_multipart(&self.bucket, &self.key, &id)
                    .await
                {
                    tracing::warn!(key = self.key, error = %e, "abort of failed upload failed");
                }
            }
            tracing::warn!(key = self.key, "upload failed, nothing was written");
        }
        result
    }

    async fn finish_inner(&mut self) -> Result<(), FsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        let rest = self.buf.split().freeze();
        if self.upload_id.is_none() {
            self.store.put(&self.bucket, &self.key, rest).await?;
            return Ok(());
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        for t in std::mem::take(&mut self.in_flight) {
            self.settle(t).await?;
        }
        let mut parts = std::mem::take(&mut self.done_parts);
        parts.sort_by_key(|p| p.number);
        let id = self.upload_id.clone().unwrap_or_default();
        self.store
            .complete_multipart(&self.bucket, &self.key, &id, parts)
            .await?;
        self.upload_id = None;
        Ok(())
    }

    /// Gives up (file released without a successful close).
    pub async fn abort(&mut self) {
        self.finished = true;
        for t in self.in_flight.drain(..) {
            t.abort();
        }
        if let Some(id) = self.upload_id.take() {
            let _ = self
                .store
                .abort_multipart(&self.bucket, &self.key, &id)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::fake::MemStore;
    use crate::s3::faults::{Fault, FaultyStore};
    use crate::s3::store::Op;

    #[tokio::test]
    async fn a_large_file_is_uploaded_in_parts_while_written() {
        let s = Arc::new(MemStore::new());
        s.create_bucket("b");
        let mut u = Upload::new(s.clone(), "b".into(), "big".into(), MIN_PART_SIZE);
        let chunk = vec![9u8; 1 << 20];
        for i in 0..12u64 {
            u.write(i << 20, &chunk).await.unwrap();
        }
        // Two full parts were sent before close.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.count(Op::CreateMultipart), 1);
        assert_eq!(s.count(Op::UploadPart), 2);
        u.finish().await.unwrap();
        assert_eq!(s.count(Op::UploadPart), 3);
        assert_eq!(s.count(Op::CompleteMultipart), 1);
        assert_eq!(s.object("b", "big").unwrap().len(), 12 << 20);
        assert_eq!(s.pending_uploads(), 0);
    }

    #[tokio::test]
    async fn a_small_file_is_one_put_and_random_writes_are_refused() {
        let s = Arc::new(MemStore::new());
        s.create_bucket("b");
        let mut u = Upload::new(s.clone(), "b".into(), "small".into(), MIN_PART_SIZE);
        u.write(0, b"hello").await.unwrap();
        assert_eq!(
            u.write(100, b"x").await.unwrap_err().errno(),
            libc::EOPNOTSUPP
        );
        u.finish().await.unwrap();
        assert_eq!(&s.object("b", "small").unwrap()[..], b"hello");
        assert_eq!(s.count(Op::Put), 1);
        assert_eq!(s.count(Op::CreateMultipart), 0);
    }

    #[tokio::test]
    async fn a_failed_part_surfaces_on_close_and_aborts_the_upload() {
        let s = Arc::new(FaultyStore::new(MemStore::new()));
        s.inner().create_bucket("b");
        s.fail_next(
            Op::UploadPart,
            1,
            Fault::Error(ObjectError::AccessDenied("no".into())),
        );
        let mut u = Upload::new(s.clone(), "b".into(), "f".into(), MIN_PART_SIZE);
        let chunk = vec![1u8; 6 << 20];
        // The part is sent in the background; its failure may show now or at close.
        let w = u.write(0, &chunk).await;
        let closed = u.finish().await;
        assert!(w.is_err() || closed.is_err());
        assert!(s.inner().object("b", "f").is_none());
        assert_eq!(s.inner().pending_uploads(), 0);
    }
}
