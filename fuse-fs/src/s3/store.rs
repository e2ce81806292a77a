//! The one boundary to the outside object store.
//!
//! Everything the filesystem needs from S3 is the handful of calls below, so
//! the core can run against the in-memory fake in unit tests, against the
//! fault-injecting wrapper, and against real S3 (aws-sdk-s3) in production.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::error::ObjectError;

/// S3 returns at most this many keys per ListObjectsV2 page.
pub const LIST_PAGE_SIZE: i32 = 1000;

/// An object as a listing or a HEAD reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
}

/// One page of ListObjectsV2 with a delimiter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// Full prefixes ending in the delimiter ("dir/sub/").
    pub common_prefixes: Vec<String>,
    pub next_token: Option<String>,
}

/// A part of a finished multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: i32,
    pub etag: String,
}

/// The body of a GET, chunk by chunk as it arrives.
pub type ByteStream = BoxStream<'static, Result<Bytes, ObjectError>>;

/// The operations the filesystem performs on an object store.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// One page of keys under `prefix`, grouped at `delimiter`.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, ObjectError>;

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError>;

    /// A HEAD of one attempt, never retried: for a caller that has another
    /// way to the answer (a lookup races it with a LIST, which settles most
    /// names alone) and retries with [`ObjectStore::head`] only if it must.
    /// Wrappers forward it as such; stores without retries need not override it.
    async fn head_once(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        self.head(bucket, key).await
    }

    /// The bytes `range` of an object (end exclusive, clamped to the size).
    /// With `etag`, only of that version of it ([`ObjectError::Changed`]
    /// otherwise), so one read never mixes two versions.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream, ObjectError>;

    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), ObjectError>;

    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, ObjectError>;

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<UploadedPart, ObjectError>;

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(), ObjectError>;

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectError>;

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError>;
}

/// The operations, for counting and fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    List,
    Head,
    Get,
    Put,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
    Delete,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::List,
        Op::Head,
        Op::Get,
        Op::Put,
        Op::CreateMultipart,
        Op::UploadPart,
        Op::CompleteMultipart,
        Op::AbortMultipart,
        Op::Delete,
    ];

    /// The S3 API name, as logs and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Op::List => "ListObjectsV2",
            Op::Head => "HeadObject",
            Op::Get => "GetObject",
            Op::Put => "PutObject",
            Op::CreateMultipart => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::CompleteMultipart => "CompleteMultipartUpload",
            Op::AbortMultipart => "AbortMultipartUpload",
            Op::Delete => "DeleteObject",
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Collects a GET stream into one buffer.
pub async fn collect(mut stream: ByteStream) -> Result<Bytes, ObjectError> {
    use futures::StreamExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}
