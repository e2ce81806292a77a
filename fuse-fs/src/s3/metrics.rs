//! Request and byte counters per S3 operation, and a debug line per request.
//!
//! [`Instrumented`] wraps the real store (a [`Layered`] store), so every request the filesystem
//! makes is counted once, whatever code path issued it. The counters are
//! registered in a Prometheus registry the mount command serves over HTTP.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::error::ObjectError;
use super::layer::{Call, Get, Layer, Layered};
use super::store::{ByteStream, ObjectStore, Op};

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
    /// Bytes currently held by read buffers (the shared blocks).
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
    /// Blocks a reader found in memory (fetched, or being fetched, for
    /// another read) instead of fetching them.
    pub blocks_reused: Counter,
    /// Blocks kept for a reader behind that were let go for read-ahead
    /// needed sooner (readers drifted apart, memory full).
    pub blocks_evicted: Counter,
    /// Requests the kernel sent to the mount, by FUSE opcode.
    pub fuse_requests: Family<OpLabel, Counter>,
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
        sub.register(
            "blocks_reused",
            "Blocks a reader found in memory, fetched for another read, instead of fetching them",
            self.blocks_reused.clone(),
        );
        sub.register(
            "fuse_requests",
            "Requests the kernel sent to the mount, by FUSE opcode",
            self.fuse_requests.clone(),
        );
        sub.register(
            "blocks_evicted",
            "Blocks kept for a reader behind that were let go for read-ahead needed sooner",
            self.blocks_evicted.clone(),
        );
    }

    /// FUSE requests of opcode `op` (`LOOKUP`, `READDIRPLUS`, ...) so far.
    pub fn fuse_requests_of(&self, op: &'static str) -> u64 {
        self.fuse_requests.get_or_create(&OpLabel { op }).get()
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

/// The layer that counts and logs every request.
#[derive(Debug)]
pub struct Metered(Arc<S3Metrics>);

/// A store whose every request is counted and logged.
pub type Instrumented<S> = Layered<S, Metered>;

impl<S> Instrumented<S> {
    pub fn new(inner: S, metrics: Arc<S3Metrics>) -> Self {
        Layered::with_layer(inner, Metered(metrics))
    }
}

impl Metered {
    /// Counts a request as it is sent: one that is dropped before it
    /// answers (a HEAD a lookup no longer needs) reached S3 all the same.
    fn start(&self, op: Op) -> Instant {
        self.0
            .requests
            .get_or_create(&OpLabel { op: op.name() })
            .inc();
        Instant::now()
    }

    fn done<T>(&self, call: &Call<'_>, start: Instant, result: &Result<T, ObjectError>) {
        let (op, bucket, key) = (call.op, call.bucket, call.key);
        match result {
            Ok(_) => tracing::debug!(
                op = op.name(),
                bucket,
                key,
                ms = start.elapsed().as_millis() as u64,
                "s3 request"
            ),
            Err(e) => {
                let label = OpLabel { op: op.name() };
                self.0.errors.get_or_create(&label).inc();
                tracing::debug!(op = op.name(), bucket, key, error = %e, "s3 request failed");
            }
        }
        if call.sent > 0 {
            self.bytes(op).inc_by(call.sent);
        }
    }

    fn bytes(&self, op: Op) -> Counter {
        self.0
            .bytes
            .get_or_create(&OpLabel { op: op.name() })
            .clone()
    }
}

#[async_trait]
impl Layer for Metered {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        request: BoxFuture<'a, Result<T, ObjectError>>,
    ) -> BoxFuture<'a, Result<T, ObjectError>> {
        Box::pin(async move {
            let t = self.start(call.op);
            let r = request.await;
            self.done(&call, t, &r);
            r
        })
    }

    async fn get_range<S: ObjectStore>(
        &self,
        inner: &S,
        get: Get<'_>,
    ) -> Result<ByteStream, ObjectError> {
        let (start, end) = (get.range.start, get.range.end);
        let r = self.around(get.call(), get.send(inner)).await;
        tracing::trace!(start, end, "get range");
        let counter = self.bytes(Op::Get);
        r.map(|s| {
            Box::pin(s.inspect(move |c| {
                if let Ok(b) = c {
                    counter.inc_by(b.len() as u64);
                }
            })) as ByteStream
        })
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
