//! A wrapper that makes another store fail on purpose.
//!
//! Tests use it to check that transient failures (503 SlowDown, a body cut
//! mid-stream) are retried and that permanent ones reach the user as the
//! right errno, without a server that can be told to misbehave.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;

use super::error::ObjectError;
use super::layer::{Call, Get, Layer, Layered};
use super::store::{ByteStream, ObjectStore, Op};

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

/// The fault-injecting layer: what to fail, and what it failed.
#[derive(Debug, Default)]
pub struct Faults {
    plan: Mutex<Plan>,
    seen: [AtomicU64; Op::ALL.len()],
    injected: AtomicU64,
}

/// The fault-injecting wrapper.
pub type FaultyStore<S> = Layered<S, Faults>;

impl<S> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Layered::with_layer(inner, Faults::default())
    }

    /// The next `n` requests of `op` get `fault`.
    pub fn fail_next(&self, op: Op, n: usize, fault: Fault) {
        self.layer().fail_next(op, n, fault)
    }

    /// Every `n`-th request of `op` gets `fault` (n >= 1).
    pub fn fail_every(&self, op: Op, n: u64, fault: Fault) {
        self.layer().fail_every(op, n, fault)
    }

    pub fn clear(&self) {
        self.layer().clear()
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.layer().injected()
    }
}

impl Faults {
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
impl Layer for Faults {
    fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        request: BoxFuture<'a, Result<T, ObjectError>>,
    ) -> BoxFuture<'a, Result<T, ObjectError>> {
        Box::pin(async move {
            self.check(call.op).await?;
            request.await
        })
    }

    async fn get_range<S: ObjectStore>(
        &self,
        inner: &S,
        get: Get<'_>,
    ) -> Result<ByteStream, ObjectError> {
        let Get {
            bucket,
            key,
            range,
            etag,
        } = get;
        match self.fault_for(Op::Get) {
            Some(Fault::Error(e)) => Err(e),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::CutBodyAfter(limit)) => {
                let stream = inner.get_range(bucket, key, range, etag).await?;
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
            None => inner.get_range(bucket, key, range, etag).await,
        }
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
