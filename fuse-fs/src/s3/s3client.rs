//! The real object store: aws-sdk-s3.
//!
//! Credentials come from the SDK's default chain (env, profile, web identity
//! / IRSA, container and instance metadata) unless the mount is anonymous or
//! has its own ([`StaticCredentials`], per volume).
//! Retries of 500/503/SlowDown, throttling and timeouts use the SDK's standard
//! retry strategy (exponential backoff with full jitter); a body that breaks
//! mid-stream is retried by the prefetcher, which knows how much it already has.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

pub use super::credentials::StaticCredentials;
use super::error::ObjectError;
use super::store::{ByteStream, ListPage, ObjectInfo, ObjectStore, UploadedPart};

/// How to reach the S3 service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Overrides the AWS endpoint (Garage, MinIO, a proxy).
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key`.
    pub force_path_style: bool,
    /// Send unsigned requests (public buckets); skips the credential chain.
    pub anonymous: bool,
    /// Attempts per request, including the first.
    pub max_attempts: u32,
    /// Fixed credentials instead of the default chain (never logged, never
    /// put on a command line: a child mount gets them through its
    /// environment or a `--credentials-file` pipe).
    pub credentials: Option<StaticCredentials>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            force_path_style: false,
            anonymous: false,
            max_attempts: 10,
            credentials: None,
        }
    }
}

/// [`ObjectStore`] over aws-sdk-s3.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
}

impl S3Store {
    pub async fn new(cfg: &S3Config) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = RetryConfig::standard()
            .with_max_attempts(cfg.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(50))
            .with_max_backoff(Duration::from_secs(5));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if cfg.anonymous {
            loader = loader.no_credentials();
        } else if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "hubfs-static",
            ));
        }
        let sdk = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.force_path_style)
            // Checksums of whole objects do not apply to ranged reads, and
            // computing them costs CPU on every write.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(url) = &cfg.endpoint_url {
            builder = builder.endpoint_url(url.clone());
        }
        Self {
            client: Client::from_conf(builder.build()),
        }
    }
}

fn map_err<E>(e: SdkError<E, HttpResponse>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ObjectError::Transient(text)
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            classify(se.err().code().unwrap_or_default(), status, text)
        }
        _ => ObjectError::Other(text),
    }
}

/// Sorts a service error by its S3 code, falling back to the HTTP status.
fn classify(code: &str, status: u16, text: String) -> ObjectError {
    match code {
        "NoSuchKey" | "NoSuchBucket" | "NotFound" | "NoSuchUpload" => ObjectError::NotFound,
        "AccessDenied" | "Forbidden" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
            ObjectError::AccessDenied(text)
        }
        "InvalidRange" => ObjectError::InvalidRange,
        "PreconditionFailed" => ObjectError::Changed,
        "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" => {
            ObjectError::Transient(text)
        }
        _ if status == 404 => ObjectError::NotFound,
        _ if status == 403 => ObjectError::AccessDenied(text),
        _ if status == 416 => ObjectError::InvalidRange,
        _ if status == 412 => ObjectError::Changed,
        _ if status >= 500 => ObjectError::Transient(text),
        _ => ObjectError::Other(text),
    }
}

fn to_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl S3Store {
    /// A HEAD, with the client's retry policy or `config`'s instead.
    async fn head_with(
        &self,
        bucket: &str,
        key: &str,
        config: Option<aws_sdk_s3::config::Builder>,
    ) -> Result<ObjectInfo, ObjectError> {
        let request = self.client.head_object().bucket(bucket).key(key);
        let out = match config {
            Some(config) => request.customize().config_override(config).send().await,
            None => request.send().await,
        }
        .map_err(map_err)?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            mtime: to_time(out.last_modified()),
            etag: out.e_tag().map(str::to_string),
        })
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, ObjectError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .max_keys(max_keys)
            .send()
            .await
            .map_err(map_err)?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    mtime: to_time(o.last_modified()),
                    etag: o.e_tag().map(str::to_string),
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect();
        let next_token = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next_token,
        })
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        self.head_with(bucket, key, None).await
    }

    async fn head_once(&self, bucket: &str, key: &str) -> Result<ObjectInfo, ObjectError> {
        let once = aws_sdk_s3::config::Builder::default()
            .retry_config(RetryConfig::standard().with_max_attempts(1));
        self.head_with(bucket, key, Some(once)).await
    }

    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream, ObjectError> {
        if range.start >= range.end {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_if_match(etag.map(str::to_string))
            .send()
            .await
            .map_err(map_err)?;
        let body: SdkByteStream = out.body;
        Ok(Box::pin(futures::stream::unfold(body, |mut body| async {
            let item = body.next().await?;
            Some((
                item.map_err(|e| ObjectError::Transient(format!("reading body: {e}"))),
                body,
            ))
        })))
    }

    async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn create_multipart(&self, bucket: &str, key: &str) -> Result<String, ObjectError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(map_err)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| ObjectError::Other("CreateMultipartUpload without an upload id".into()))
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<UploadedPart, ObjectError> {
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(map_err)?;
        Ok(UploadedPart {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<UploadedPart>,
    ) -> Result<(), ObjectError> {
        let parts = parts
            .into_iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(p.etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectError> {
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified_by_code_then_status() {
        assert_eq!(
            classify("NoSuchKey", 404, String::new()),
            ObjectError::NotFound
        );
        assert_eq!(classify("", 404, String::new()), ObjectError::NotFound);
        assert!(matches!(
            classify("SlowDown", 503, String::new()),
            ObjectError::Transient(_)
        ));
        assert!(matches!(
            classify("", 503, String::new()),
            ObjectError::Transient(_)
        ));
        assert!(matches!(
            classify("AccessDenied", 403, String::new()),
            ObjectError::AccessDenied(_)
        ));
        assert!(matches!(
            classify("Weird", 400, String::new()),
            ObjectError::Other(_)
        ));
    }
}
