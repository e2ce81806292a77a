//! A wrapper that makes another store fail on purpose.
//!
//! Tests use it to check that transient failures (503 SlowDown, a body cut
//! mid-stream) are retried and that permanent ones reach the user as the
//! right errno, without a server that can be told to misbehave.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use super::error::ObjectError;
use super::store::{ByteStream, ListPage, ObjectInfo, ObjectStore, Op, UploadedPart};

/// What to do to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Fail the request with this error before it reaches the store.
    Error(ObjectError),
    /// Let a GET start, then cut its body after this many bytes.
    CutBodyAfter(u64),
    /// Never answer (a server that hangs): the caller's bound must end it.
    Stall,
}

#[derive(Debug, Default)]
struct Plan {
    /// Faults for the next requests of an operation, consumed in order.
    next: HashMap<Op, Vec<Fault>>,
    /// Fail every n-th request of an operation.
    every: HashMap<Op, (u64, Fault)>,
}

/// The fault-injecting wrapper.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    plan: Mutex<Plan>,
    seen: [AtomicU64; Op::ALL.len()],
    injected: AtomicU64,
}

impl<S: ObjectStore> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Mutex::new(Plan::default()),
            seen: Default::default(),
            injected: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `n` requests of `op` get `fault`.
    pub fn fail_next(&self, op: Op, n: usize, fault: Fault) {
        let mut plan = self.plan.lock();
        let q = plan.next.entry(op).or_default();
        q.extend(std::iter::repeat_n(fault, n));
    }

    /// Every `n`-th request of `op` gets `fault` (n >= 1).
    pub fn fail_every(&self, op: Op, n: u64, fault: Fault) {
        self.plan.lock().every.insert(op, (n.max(1), fault));
    }

    pub fn clear(&self) {
        *self.plan.lock() = Plan::default();
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn fault_for(&self, op: Op) -> Option<Fault> {
        let n = self.seen[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let mut plan = self.plan.lock();
        let fault = match plan.next.get_mut(&op) {
            Some(q) if !q.is_empty() => Some(q.remove(0)),
            _ => match plan.every.get(&op) {
                Some((every, f)) if n.is_multiple_of(*every) => Some(f.clone()),
                _ => None,
            },
        };
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        fault
    }

    async fn check(&self, op: Op) -> Result<(), ObjectError> {
        match self.fault_for(op) {
            Some(Fault::Error(e)) => Err(e),
            Some(Fault::Stall) => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, ObjectError> {
        self.check(Op::List).await?;
        self.inner
            .list_page(bucket, prefix, delimiter, token, max_keys)
            .await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        self.check(Op::Head).await?;
        self.inner.head(bucket, key).await
    }

    async fn head_once(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        self.check(Op::Head).await?;
        self.inner.head_once(bucket, key).await
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream, ObjectError> {
        match self.fault_for(Op::Get) {
            Some(Fault::Error(e)) => Err(e),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::CutBodyAfter(limit)) => {
                let stream = self.inner.get_range(bucket, key, range, etag).await?;
                let mut sent = 0u64;
                let cut = stream
                    .map(move |chunk| {
                        let chunk = chunk?;
                        if sent >= limit {
                            return Err(ObjectError::Transient("connection reset".into()));
                        }
                        let keep = (limit - sent).min(chunk.len() as u64) as usize;
                        sent += keep as u64;
                        if keep < chunk.len() {
                            // Deliver what fits, the error comes with the next poll.
                            return Ok(chunk.slice(..keep));
                        }
                        Ok(chunk)
                    })
                    .scan(false, |failed, item| {
                        if *failed {
                            return futures::future::ready(None);
                        }
                        *failed = item.is_err();
                        futures::future::ready(Some(item))
                    });
                let tail = futures::stream::once(async {
                    Err::<Bytes, _>(ObjectError::Transient("connection reset".into()))
                });
                // A cut body always ends in an error, even if the cut fell on the end.
                Ok(Box::pin(cut.chain(tail).scan(false, |done, item| {
                    if *done {
                        return futures::future::ready(None);
                    }
                    *done = item.is_err();
                    futures::future::ready(Some(item))
                })))
            }
            None => self.inner.get_range(bucket, key, range, etag).await,
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.check(Op::Put).await?;
        self.inner.put(bucket, key, body).await
    }

    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, ObjectError> {
        self.check(Op::CreateMultipart).await?;
        self.inner.create_multipart(bucket, key).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<UploadedPart, ObjectError> {
        self.check(Op::UploadPart).await?;
        self.inner
            .upload_part(bucket, key, upload_id, number, body)
            .await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(), ObjectError> {
        self.check(Op::CompleteMultipart).await?;
        self.inner
            .complete_multipart(bucket, key, upload_id, parts)
            .await
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectError> {
        self.check(Op::AbortMultipart).await?;
        self.inner.abort_multipart(bucket, key, upload_id).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.check(Op::Delete).await?;
        self.inner.delete(bucket, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::fake::MemStore;
    use crate::s3::store::collect;

    #[tokio::test]
    async fn next_faults_are_consumed_in_order() {
        let s = FaultyStore::new(MemStore::new());
        s.inner().create_bucket("b");
        s.inner().insert("b", "k", "v");
        s.fail_next(
            Op::Head,
            1,
            Fault::Error(ObjectError::Transient("503".into())),
        );
        assert!(s.head("b", "k").await.is_err());
        assert!(s.head("b", "k").await.is_ok());
        assert_eq!(s.injected(), 1);
    }

    #[tokio::test]
    async fn a_cut_body_ends_in_an_error_after_the_limit() {
        let s = FaultyStore::new(MemStore::new());
        s.inner().create_bucket("b");
        s.inner().insert("b", "k", vec![7u8; 1000]);
        s.inner().set_chunk_size(100);
        s.fail_next(Op::Get, 1, Fault::CutBodyAfter(250));
        let mut stream = s.get_range("b", "k", 0..1000, None).await.unwrap();
        let mut got = 0;
        let mut failed = false;
        while let Some(c) = stream.next().await {
            match c {
                Ok(b) => got += b.len(),
                Err(_) => failed = true,
            }
        }
        assert_eq!(got, 250);
        assert!(failed);
        let whole = collect(s.get_range("b", "k", 0..1000, None).await.unwrap()).await;
        assert_eq!(whole.unwrap().len(), 1000);
    }
}
