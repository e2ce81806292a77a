//! Lookup of a name: the first thing every path walk does, so the one place
//! whose latency a new user feels. Answers from the inode table, the
//! negative cache or a cached listing when it can; otherwise asks S3 with
//! at most two requests and answers as soon as the answer is conclusive.

use std::time::{Duration, Instant, SystemTime};

use super::{until, FsError, Ino, Inode, Kind, Location, NewChild, S3Fs, Stat};
use crate::s3::error::ObjectError;
use crate::s3::listing::{valid_name, NAME_MAX};
use crate::s3::metrics::OpLabel;
use crate::s3::store::{ObjectInfo, ObjectStore, Op};

/// What a remote lookup found.
enum Found {
    Dir,
    File(ObjectInfo),
}

impl<S: ObjectStore> S3Fs<S> {
    pub(super) async fn lookup_node(&self, parent: Ino, name: &str) -> Result<Inode, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if !valid_name(name) {
            return Err(FsError::NotFound);
        }
        let p = self.node(parent)?;
        let now = Instant::now();
        let (source, prefix) = match &p.loc {
            Location::File { .. } => return Err(FsError::NotDir),
            Location::Root => {
                let (i, s) = self
                    .cfg
                    .sources
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.name == name)
                    .ok_or(FsError::NotFound)?;
                return Ok(self.inodes.upsert(
                    parent,
                    name,
                    NewChild::dir(
                        i,
                        s.prefix.clone(),
                        self.started,
                        until(now, Duration::MAX),
                        false,
                    ),
                ));
            }
            Location::Dir { source, prefix } => (*source, prefix.clone()),
        };
        if let Some(c) = self.inodes.child(parent, name) {
            if c.is_fresh(now) {
                return Ok(c);
            }
        }
        if self.inodes.is_negative(parent, name, now) {
            return Err(FsError::NotFound);
        }
        if let Some(listing) = self.dirs.get(parent, now) {
            return match listing.get(name) {
                Some(e) => {
                    Ok(self
                        .inodes
                        .upsert(parent, name, self.child_from_entry(source, &prefix, e)))
                }
                None => {
                    self.inodes
                        .set_negative(parent, name, until(now, self.cfg.negative_ttl));
                    Err(FsError::NotFound)
                }
            };
        }
        let key = format!("{prefix}{name}");
        let found = self
            .bounded(Op::Head, self.remote_lookup(source, &key))
            .await?;
        let expiry = until(Instant::now(), self.cfg.metadata_ttl);
        match found {
            Some(Found::Dir) => Ok(self.inodes.upsert(
                parent,
                name,
                NewChild::dir(
                    source,
                    format!("{key}/"),
                    SystemTime::UNIX_EPOCH,
                    expiry,
                    false,
                ),
            )),
            Some(Found::File(info)) => Ok(self.inodes.upsert(
                parent,
                name,
                NewChild {
                    kind: Kind::File,
                    loc: Location::File { source, key },
                    stat: Stat {
                        size: info.size,
                        mtime: info.mtime,
                        etag: info.etag,
                        expiry,
                    },
                    local: false,
                },
            )),
            None => {
                // A local child (mkdir, file being written) exists only here.
                if let Some(c) = self.inodes.child(parent, name) {
                    if c.local {
                        return Ok(c);
                    }
                }
                self.inodes.set_negative(
                    parent,
                    name,
                    until(Instant::now(), self.cfg.negative_ttl),
                );
                Err(FsError::NotFound)
            }
        }
    }

    /// What `key` is in the bucket of `source`: a directory (some key starts
    /// with `key/`; directories shadow an object of the same name, as in
    /// every S3 filesystem), an object, or nothing.
    ///
    /// A HEAD of `key` and a one-key LIST of `key/` go out together and the
    /// answer comes as soon as it is conclusive: a LIST that shows anything
    /// is a directory, whatever the HEAD is still doing (it is dropped, so a
    /// server that fails HEADs of directory-shaped keys costs no retry); an
    /// empty LIST and the HEAD's answer settle the rest. The HEAD is one
    /// attempt; only when the LIST was empty and that attempt failed in a
    /// way worth retrying (503 SlowDown, a broken connection) does a
    /// retrying HEAD follow. At most two requests per name otherwise.
    async fn remote_lookup(&self, source: usize, key: &str) -> Result<Option<Found>, ObjectError> {
        let bucket = &self.cfg.sources[source].bucket;
        let sub = format!("{key}/");
        let head = self.store.head_once(bucket, key);
        let list = self.store.list_page(bucket, &sub, Some("/"), None, 1);
        tokio::pin!(head, list);
        let mut head_done = None;
        let listed = loop {
            tokio::select! {
                l = &mut list => break l,
                h = &mut head, if head_done.is_none() => head_done = Some(h),
            }
        };
        match listed {
            Ok(page) if !page.objects.is_empty() || !page.common_prefixes.is_empty() => {
                return Ok(Some(Found::Dir));
            }
            Ok(_) | Err(ObjectError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let head = match head_done {
            Some(h) => h,
            None => head.await,
        };
        let head = match head {
            Err(e) if e.is_retryable() => {
                tracing::debug!(bucket, key, error = %e, "HEAD failed once; retrying");
                self.store.head(bucket, key).await
            }
            h => h,
        };
        match head {
            Ok(info) => Ok(Some(Found::File(info))),
            Err(ObjectError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs a store call on behalf of an interactive request (a lookup, a
    /// `stat`, a page of `ls`, an open) within `cfg.interactive_timeout`:
    /// retries of throttling and outages happen inside, but the caller gets
    /// EIO once the bound is reached rather than hanging. Each give-up
    /// (retries exhausted or the bound reached) is counted by operation.
    pub(super) async fn bounded<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = Result<T, ObjectError>>,
    ) -> Result<T, ObjectError> {
        let r = match tokio::time::timeout(self.cfg.interactive_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(ObjectError::Transient(format!(
                "no answer from S3 within {:?}",
                self.cfg.interactive_timeout
            ))),
        };
        if let Err(e @ ObjectError::Transient(_)) = &r {
            tracing::warn!(op = op.name(), error = %e, "gave up on S3; the caller gets EIO");
            self.metrics
                .give_ups
                .get_or_create(&OpLabel { op: op.name() })
                .inc();
        }
        r
    }
}
