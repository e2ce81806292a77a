//! An in-memory object store that counts requests per operation.
//!
//! It implements S3's listing semantics (sorted keys, delimiter grouping,
//! 1000-key pages, continuation tokens) so tests can assert exactly how many
//! requests an `ls` costs without a server, and it records the range of
//! every GET, so they can assert how many times each byte was fetched.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::blocks::ObjectVersion;
use super::error::ObjectError;
use super::store::{ByteStream, ListPage, ObjectInfo, ObjectStore, Op, UploadedPart};

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    mtime: SystemTime,
    etag: String,
}

#[derive(Debug, Default)]
struct Upload {
    bucket: String,
    key: String,
    parts: BTreeMap<i32, Bytes>,
}

/// The fake store. Buckets must be created before use.
#[derive(Debug, Default)]
pub struct MemStore {
    buckets: Mutex<HashMap<String, BTreeMap<String, Object>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    counts: [AtomicU64; Op::ALL.len()],
    bytes_read: AtomicU64,
    next_id: AtomicU64,
    /// GET streams are cut into chunks of this size (0 = one chunk).
    chunk: AtomicU64,
    /// What a HEAD of a directory-shaped key answers, if not 404.
    dir_head: Mutex<Option<ObjectError>>,
    /// (bucket, key, bytes served) of every GET, in order.
    gets: Mutex<Vec<(String, String, Range<u64>)>>,
    /// How long a GET takes to answer (0: at once), so that concurrent
    /// readers overlap as they would against a server.
    get_delay_us: AtomicU64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.buckets.lock().entry(bucket.to_string()).or_default();
    }

    /// Adds an object directly, without counting a request.
    pub fn insert(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.buckets
            .lock()
            .entry(bucket.to_string())
            .or_default()
            .insert(
                key.to_string(),
                Object {
                    data: data.into(),
                    mtime: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
                    etag: format!("\"{n:x}\""),
                },
            );
    }

    /// The current version of an object (size and ETag), as an open of it
    /// would read it.
    pub fn version(&self, bucket: &str, key: &str) -> Option<ObjectVersion> {
        let buckets = self.buckets.lock();
        let o = buckets.get(bucket)?.get(key)?;
        Some(ObjectVersion {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: o.data.len() as u64,
            etag: Some(o.etag.clone()),
        })
    }

    /// The stored bytes of an object, if present.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.buckets
            .lock()
            .get(bucket)
            .and_then(|b| b.get(key))
            .map(|o| o.data.clone())
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.buckets
            .lock()
            .get(bucket)
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Requests made so far for one operation.
    pub fn count(&self, op: Op) -> u64 {
        self.counts[op.index()].load(Ordering::SeqCst)
    }

    /// Requests made so far, all operations.
    pub fn total(&self) -> u64 {
        Op::ALL.iter().map(|op| self.count(*op)).sum()
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::SeqCst)
    }

    pub fn reset_counts(&self) {
        for c in &self.counts {
            c.store(0, Ordering::SeqCst);
        }
        self.bytes_read.store(0, Ordering::SeqCst);
        self.gets.lock().clear();
    }

    /// The byte ranges GETs of one object served, in order.
    pub fn get_ranges(&self, bucket: &str, key: &str) -> Vec<Range<u64>> {
        self.gets
            .lock()
            .iter()
            .filter(|(b, k, _)| b == bucket && k == key)
            .map(|(_, _, r)| r.clone())
            .collect()
    }

    /// For each `unit`-sized slice of the first `size` bytes of an object:
    /// how many GETs fetched any of it.
    pub fn fetches_per_unit(&self, bucket: &str, key: &str, size: u64, unit: u64) -> Vec<u64> {
        let mut counts = vec![0u64; size.div_ceil(unit) as usize];
        for r in self.get_ranges(bucket, key) {
            if r.start >= r.end {
                continue;
            }
            for u in r.start / unit..=((r.end - 1) / unit).min(counts.len() as u64 - 1) {
                counts[u as usize] += 1;
            }
        }
        counts
    }

    /// Makes every GET wait `d` before it answers.
    pub fn set_get_delay(&self, d: std::time::Duration) {
        self.get_delay_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Makes a HEAD of a key that is not an object but a directory (some
    /// key starts with `key/`) fail with `error` instead of 404, as
    /// file-backed servers such as s3s-fs do (500): a lookup must not wait
    /// on it when the LIST it sends alongside already tells.
    pub fn fail_directory_heads(&self, error: ObjectError) {
        *self.dir_head.lock() = Some(error);
    }

    /// Makes GET bodies arrive in chunks of `n` bytes, like a network.
    pub fn set_chunk_size(&self, n: u64) {
        self.chunk.store(n, Ordering::Relaxed);
    }

    fn hit(&self, op: Op) {
        self.counts[op.index()].fetch_add(1, Ordering::SeqCst);
    }

    fn with_bucket<T>(
        &self,
        bucket: &str,
        f: impl FnOnce(&mut BTreeMap<String, Object>) -> T,
    ) -> Result<T, ObjectError> {
        let mut buckets = self.buckets.lock();
        let b = buckets.get_mut(bucket).ok_or(ObjectError::NotFound)?;
        Ok(f(b))
    }
}

fn info(key: &str, o: &Object) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: o.data.len() as u64,
        mtime: o.mtime,
        etag: Some(o.etag.clone()),
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, ObjectError> {
        self.hit(Op::List);
        let max = max_keys.clamp(1, 1000) as usize;
        self.with_bucket(bucket, |b| {
            let mut page = ListPage::default();
            let mut n = 0;
            let mut last: Option<String> = None;
            let start = token.clone().unwrap_or_default();
            for (key, o) in b.range(prefix.to_string()..) {
                if !key.starts_with(prefix) {
                    break;
                }
                if token.is_some() && key.as_str() <= start.as_str() {
                    continue;
                }
                let rest = &key[prefix.len()..];
                let entry = match delimiter.and_then(|d| rest.find(d).map(|i| (i, d))) {
                    Some((i, d)) => {
                        let cp = format!("{prefix}{}{d}", &rest[..i]);
                        if page.common_prefixes.last() == Some(&cp) {
                            continue;
                        }
                        if token.is_some() && cp.as_str() <= start.as_str() {
                            continue;
                        }
                        Err(cp)
                    }
                    None => Ok(info(key, o)),
                };
                if n == max {
                    page.next_token = last;
                    return page;
                }
                n += 1;
                match entry {
                    Ok(obj) => {
                        last = Some(obj.key.clone());
                        page.objects.push(obj);
                    }
                    Err(cp) => {
                        // The token must sort after every key under the prefix.
                        last = Some(format!("{cp}\u{10FFFF}"));
                        page.common_prefixes.push(cp);
                    }
                }
            }
            page
        })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        self.hit(Op::Head);
        let dir_head = self.dir_head.lock().clone();
        self.with_bucket(bucket, |b| match b.get(key) {
            Some(o) => Ok(info(key, o)),
            None => {
                let dir = format!("{key}/");
                let is_dir = b
                    .range(dir.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&dir));
                match dir_head {
                    Some(e) if is_dir => Err(e),
                    _ => Err(ObjectError::NotFound),
                }
            }
        })?
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream, ObjectError> {
        self.hit(Op::Get);
        let delay = self.get_delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(delay)).await;
        }
        let (data, current) = self
            .with_bucket(bucket, |b| {
                b.get(key).map(|o| (o.data.clone(), o.etag.clone()))
            })?
            .ok_or(ObjectError::NotFound)?;
        if etag.is_some_and(|e| e != current) {
            return Err(ObjectError::Changed);
        }
        let len = data.len() as u64;
        if range.start > len || (range.start == len && len > 0) || range.start > range.end {
            return Err(ObjectError::InvalidRange);
        }
        let body = data.slice(range.start as usize..range.end.min(len) as usize);
        self.bytes_read
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        self.gets.lock().push((
            bucket.to_string(),
            key.to_string(),
            range.start..range.start + body.len() as u64,
        ));
        let chunk = self.chunk.load(Ordering::Relaxed) as usize;
        let chunks: Vec<Result<Bytes, ObjectError>> = if chunk == 0 || body.is_empty() {
            vec![Ok(body)]
        } else {
            (0..body.len())
                .step_by(chunk)
                .map(|i| Ok(body.slice(i..(i + chunk).min(body.len()))))
                .collect()
        };
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.hit(Op::Put);
        self.with_bucket(bucket, |_| ())?;
        self.insert(bucket, key, body);
        Ok(())
    }

    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, ObjectError> {
        self.hit(Op::CreateMultipart);
        self.with_bucket(bucket, |_| ())?;
        let id = format!("upload-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        self.uploads.lock().insert(
            id.clone(),
            Upload {
                bucket: bucket.to_string(),
                key: key.to_string(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        _bucket: &str,
        _key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<UploadedPart, ObjectError> {
        self.hit(Op::UploadPart);
        let mut uploads = self.uploads.lock();
        let up = uploads.get_mut(upload_id).ok_or(ObjectError::NotFound)?;
        up.parts.insert(number, body);
        Ok(UploadedPart {
            number,
            etag: format!("\"part-{number}\""),
        })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(), ObjectError> {
        self.hit(Op::CompleteMultipart);
        let up = self
            .uploads
            .lock()
            .remove(upload_id)
            .ok_or(ObjectError::NotFound)?;
        if up.bucket != bucket || up.key != key {
            return Err(ObjectError::Other("upload id of another object".into()));
        }
        let mut data = bytes::BytesMut::new();
        for p in &parts {
            let body = up
                .parts
                .get(&p.number)
                .ok_or_else(|| ObjectError::Other(format!("part {} missing", p.number)))?;
            data.extend_from_slice(body);
        }
        self.insert(bucket, key, data.freeze());
        Ok(())
    }

    async fn abort_multipart(
        &self,
        _bucket: &str,
        _key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectError> {
        self.hit(Op::AbortMultipart);
        self.uploads.lock().remove(upload_id);
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.hit(Op::Delete);
        self.with_bucket(bucket, |b| {
            b.remove(key);
        })
    }
}

/// Pending multipart uploads, for tests that check nothing is left behind.
impl MemStore {
    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::store::collect;

    async fn list_all(s: &MemStore, prefix: &str) -> (Vec<String>, Vec<String>, usize) {
        let (mut objs, mut cps, mut pages) = (vec![], vec![], 0);
        let mut token = None;
        loop {
            let p = s
                .list_page("b", prefix, Some("/"), token, 1000)
                .await
                .unwrap();
            pages += 1;
            objs.extend(p.objects.into_iter().map(|o| o.key));
            cps.extend(p.common_prefixes);
            token = p.next_token;
            if token.is_none() {
                return (objs, cps, pages);
            }
        }
    }

    #[tokio::test]
    async fn listing_groups_by_delimiter_and_pages_by_1000() {
        let s = MemStore::new();
        s.create_bucket("b");
        for i in 0..2500 {
            s.insert("b", &format!("d/f{i:05}"), "x");
        }
        for i in 0..1200 {
            s.insert("b", &format!("d/sub{i:04}/x"), "x");
            s.insert("b", &format!("d/sub{i:04}/y"), "x");
        }
        let (objs, cps, pages) = list_all(&s, "d/").await;
        assert_eq!(objs.len(), 2500);
        assert_eq!(cps.len(), 1200);
        assert_eq!(pages, 4); // 3700 entries
        assert_eq!(s.count(Op::List), 4);
        let mut sorted = cps.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 1200);
    }

    #[tokio::test]
    async fn ranges_are_clamped_and_invalid_ranges_rejected() {
        let s = MemStore::new();
        s.create_bucket("b");
        s.insert("b", "k", "hello");
        let got = collect(s.get_range("b", "k", 1..100, None).await.unwrap())
            .await
            .unwrap();
        assert_eq!(&got[..], b"ello");
        assert_eq!(
            s.get_range("b", "k", 9..10, None).await.err(),
            Some(ObjectError::InvalidRange)
        );
        assert_eq!(s.count(Op::Get), 2);
    }
}
