//! Request and byte counters per S3 operation, and a debug line per request.
//!
//! [`Instrumented`] wraps the real store, so every request the filesystem
//! makes is counted once, whatever code path issued it. The counters are
//! registered in a Prometheus registry the mount command serves over HTTP.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::error::ObjectError;
use super::store::{ByteStream, ListPage, ObjectInfo, ObjectStore, Op, UploadedPart};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// The counters of one mount.
#[derive(Debug, Clone, Default)]
pub struct S3Metrics {
    pub requests: Family<OpLabel, Counter>,
    pub errors: Family<OpLabel, Counter>,
    pub bytes: Family<OpLabel, Counter>,
    /// Interactive calls that answered EIO: retries exhausted or the time
    /// bound reached.
    pub give_ups: Family<OpLabel, Counter>,
    /// Bytes currently held by prefetch buffers.
    pub prefetch_bytes: Gauge,
    /// Versioned GETs served whole from the local data cache.
    pub cache_hits: Counter,
    /// Versioned GETs that went to S3 (and filled the cache).
    pub cache_misses: Counter,
    /// Bytes served from the data cache.
    pub cache_hit_bytes: Counter,
    /// Bytes written into the data cache.
    pub cache_fill_bytes: Counter,
    /// Bytes the data cache holds now.
    pub cache_bytes: Gauge,
}

impl S3Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("hubfs_s3");
        sub.register(
            "requests",
            "S3 requests by operation",
            self.requests.clone(),
        );
        sub.register(
            "errors",
            "S3 requests that failed, by operation",
            self.errors.clone(),
        );
        sub.register(
            "bytes",
            "Bytes transferred by operation",
            self.bytes.clone(),
        );
        sub.register(
            "give_ups",
            "Interactive calls that gave up on S3 and answered EIO, by operation",
            self.give_ups.clone(),
        );
        sub.register(
            "prefetch_memory_bytes",
            "Bytes held by prefetch buffers",
            self.prefetch_bytes.clone(),
        );
        sub.register(
            "cache_hits",
            "Ranged GETs served from the local data cache",
            self.cache_hits.clone(),
        );
        sub.register(
            "cache_misses",
            "Ranged GETs of a known version that went to S3",
            self.cache_misses.clone(),
        );
        sub.register(
            "cache_hit_bytes",
            "Bytes served from the local data cache",
            self.cache_hit_bytes.clone(),
        );
        sub.register(
            "cache_fill_bytes",
            "Bytes written into the local data cache",
            self.cache_fill_bytes.clone(),
        );
        sub.register(
            "cache_bytes",
            "Bytes held by the local data cache",
            self.cache_bytes.clone(),
        );
    }

    pub fn requests_of(&self, op: Op) -> u64 {
        self.requests
            .get_or_create(&OpLabel { op: op.name() })
            .get()
    }

    /// The registry text, as a `/metrics` endpoint returns it.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// A store wrapper that counts and logs every request.
#[derive(Debug)]
pub struct Instrumented<S> {
    inner: S,
    metrics: Arc<S3Metrics>,
}

impl<S> Instrumented<S> {
    pub fn new(inner: S, metrics: Arc<S3Metrics>) -> Self {
        Self { inner, metrics }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Counts a request as it is sent: one that is dropped before it
    /// answers (a HEAD a lookup no longer needs) reached S3 all the same.
    fn start(&self, op: Op) -> Instant {
        self.metrics
            .requests
            .get_or_create(&OpLabel { op: op.name() })
            .inc();
        Instant::now()
    }

    fn done<T>(
        &self,
        op: Op,
        bucket: &str,
        key: &str,
        start: Instant,
        result: &Result<T, ObjectError>,
    ) {
        let label = OpLabel { op: op.name() };
        match result {
            Ok(_) => tracing::debug!(
                op = op.name(),
                bucket,
                key,
                ms = start.elapsed().as_millis() as u64,
                "s3 request"
            ),
            Err(e) => {
                self.metrics.errors.get_or_create(&label).inc();
                tracing::debug!(op = op.name(), bucket, key, error = %e, "s3 request failed");
            }
        }
    }

    fn add_bytes(&self, op: Op, n: u64) {
        self.metrics
            .bytes
            .get_or_create(&OpLabel { op: op.name() })
            .inc_by(n);
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Instrumented<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, ObjectError> {
        let t = self.start(Op::List);
        let r = self
            .inner
            .list_page(bucket, prefix, delimiter, token, max_keys)
            .await;
        self.done(Op::List, bucket, prefix, t, &r);
        r
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        let t = self.start(Op::Head);
        let r = self.inner.head(bucket, key).await;
        self.done(Op::Head, bucket, key, t, &r);
        r
    }

    async fn head_once(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        let t = self.start(Op::Head);
        let r = self.inner.head_once(bucket, key).await;
        self.done(Op::Head, bucket, key, t, &r);
        r
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream, ObjectError> {
        let t = self.start(Op::Get);
        let r = self.inner.get_range(bucket, key, range.clone(), etag).await;
        self.done(Op::Get, bucket, key, t, &r);
        tracing::trace!(start = range.start, end = range.end, "get range");
        let metrics = self.metrics.clone();
        r.map(|s| {
            let counter = metrics
                .bytes
                .get_or_create(&OpLabel { op: Op::Get.name() })
                .clone();
            Box::pin(s.inspect(move |c| {
                if let Ok(b) = c {
                    counter.inc_by(b.len() as u64);
                }
            })) as ByteStream
        })
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), ObjectError> {
        let t = self.start(Op::Put);
        let n = body.len() as u64;
        let r = self.inner.put(bucket, key, body).await;
        self.done(Op::Put, bucket, key, t, &r);
        self.add_bytes(Op::Put, n);
        r
    }

    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, ObjectError> {
        let t = self.start(Op::CreateMultipart);
        let r = self.inner.create_multipart(bucket, key).await;
        self.done(Op::CreateMultipart, bucket, key, t, &r);
        r
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<UploadedPart, ObjectError> {
        let t = self.start(Op::UploadPart);
        let n = body.len() as u64;
        let r = self
            .inner
            .upload_part(bucket, key, upload_id, number, body)
            .await;
        self.done(Op::UploadPart, bucket, key, t, &r);
        self.add_bytes(Op::UploadPart, n);
        r
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(), ObjectError> {
        let t = self.start(Op::CompleteMultipart);
        let r = self
            .inner
            .complete_multipart(bucket, key, upload_id, parts)
            .await;
        self.done(Op::CompleteMultipart, bucket, key, t, &r);
        r
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectError> {
        let t = self.start(Op::AbortMultipart);
        let r = self.inner.abort_multipart(bucket, key, upload_id).await;
        self.done(Op::AbortMultipart, bucket, key, t, &r);
        r
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        let t = self.start(Op::Delete);
        let r = self.inner.delete(bucket, key).await;
        self.done(Op::Delete, bucket, key, t, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::fake::MemStore;
    use crate::s3::store::collect;

    #[tokio::test]
    async fn counts_requests_errors_and_bytes() {
        let metrics = S3Metrics::new();
        let mem = MemStore::new();
        mem.create_bucket("b");
        mem.insert("b", "k", vec![1u8; 300]);
        let s = Instrumented::new(mem, metrics.clone());
        collect(s.get_range("b", "k", 0..100, None).await.unwrap())
            .await
            .unwrap();
        assert!(s.head("b", "missing").await.is_err());
        assert_eq!(metrics.requests_of(Op::Get), 1);
        assert_eq!(metrics.requests_of(Op::Head), 1);
        let text = metrics.encode();
        assert!(
            text.contains("hubfs_s3_bytes_total{op=\"GetObject\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("hubfs_s3_errors_total{op=\"HeadObject\"} 1"),
            "{text}"
        );
    }
}
