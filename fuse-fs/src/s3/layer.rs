//! Wrappers around a store, with the forwarding written once.
//!
//! Counting requests ([`metrics`](super::metrics)) and, in tests, failing
//! requests on purpose (`faults`) both wrap another [`ObjectStore`]. Each is a [`Layer`]:
//! what it does around one request, and, where it must, to a ranged GET as a
//! whole. [`Layered`] is the one [`ObjectStore`] implementation that sends
//! every call of the trait through a layer to the store beneath, so adding a
//! call to the trait means one new forwarding method here, not one per
//! wrapper.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use super::error::ObjectError;
use super::store::{ByteStream, ListPage, ObjectInfo, ObjectStore, Op, UploadedPart};

/// One request as a layer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub op: Op,
    pub bucket: &'a str,
    /// The key, or the prefix of a listing.
    pub key: &'a str,
    /// Bytes sent with the request (PUT and UploadPart bodies), else 0.
    pub sent: u64,
}

impl<'a> Call<'a> {
    fn new(op: Op, bucket: &'a str, key: &'a str) -> Self {
        Self {
            op,
            bucket,
            key,
            sent: 0,
        }
    }
}

/// The arguments of [`ObjectStore::get_range`], as a layer gets them.
#[derive(Debug, Clone)]
pub struct Get<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub range: Range<u64>,
    pub etag: Option<&'a str>,
}

impl<'a> Get<'a> {
    /// The request as [`Layer::around`] sees it.
    pub fn call(&self) -> Call<'a> {
        Call::new(Op::Get, self.bucket, self.key)
    }

    /// Sends the GET to `store`.
    pub fn send<S: ObjectStore>(
        self,
        store: &'a S,
    ) -> BoxFuture<'a, Result<ByteStream, ObjectError>> {
        store.get_range(self.bucket, self.key, self.range, self.etag)
    }
}

/// What a wrapper does around the requests to the store beneath it.
#[async_trait]
pub trait Layer: Send + Sync + 'static {
    /// Runs `request` (the call to the store beneath, not started yet) for
    /// `call` and returns its result, doing whatever the layer does around it
    /// (by default nothing: a layer that only changes GETs).
    fn around<'a, T: Send + 'a>(
        &'a self,
        _call: Call<'a>,
        request: BoxFuture<'a, Result<T, ObjectError>>,
    ) -> BoxFuture<'a, Result<T, ObjectError>> {
        request
    }

    /// A ranged GET. By default an ordinary request; a layer that changes
    /// the body (or answers without the store) overrides it.
    async fn get_range<S: ObjectStore>(
        &self,
        inner: &S,
        get: Get<'_>,
    ) -> Result<ByteStream, ObjectError> {
        self.around(get.call(), get.send(inner)).await
    }
}

/// A store `inner` with a layer around every request to it.
#[derive(Debug)]
pub struct Layered<S, L> {
    inner: S,
    layer: L,
}

impl<S, L> Layered<S, L> {
    pub fn with_layer(inner: S, layer: L) -> Self {
        Self { inner, layer }
    }

    /// The store beneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn layer(&self) -> &L {
        &self.layer
    }
}

#[async_trait]
impl<S: ObjectStore, L: Layer> ObjectStore for Layered<S, L> {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, ObjectError> {
        let request = self
            .inner
            .list_page(bucket, prefix, delimiter, token, max_keys);
        let call = Call::new(Op::List, bucket, prefix);
        self.layer.around(call, request).await
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        let call = Call::new(Op::Head, bucket, key);
        self.layer.around(call, self.inner.head(bucket, key)).await
    }

    async fn head_once(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        let call = Call::new(Op::Head, bucket, key);
        self.layer
            .around(call, self.inner.head_once(bucket, key))
            .await
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream, ObjectError> {
        let get = Get {
            bucket,
            key,
            range,
            etag,
        };
        self.layer.get_range(&self.inner, get).await
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), ObjectError> {
        let call = Call {
            sent: body.len() as u64,
            ..Call::new(Op::Put, bucket, key)
        };
        self.layer
            .around(call, self.inner.put(bucket, key, body))
            .await
    }

    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, ObjectError> {
        let call = Call::new(Op::CreateMultipart, bucket, key);
        let request = self.inner.create_multipart(bucket, key);
        self.layer.around(call, request).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<UploadedPart, ObjectError> {
        let call = Call {
            sent: body.len() as u64,
            ..Call::new(Op::UploadPart, bucket, key)
        };
        let request = self.inner.upload_part(bucket, key, upload_id, number, body);
        self.layer.around(call, request).await
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(), ObjectError> {
        let call = Call::new(Op::CompleteMultipart, bucket, key);
        let request = self.inner.complete_multipart(bucket, key, upload_id, parts);
        self.layer.around(call, request).await
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectError> {
        let call = Call::new(Op::AbortMultipart, bucket, key);
        let request = self.inner.abort_multipart(bucket, key, upload_id);
        self.layer.around(call, request).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        let call = Call::new(Op::Delete, bucket, key);
        self.layer
            .around(call, self.inner.delete(bucket, key))
            .await
    }
}
