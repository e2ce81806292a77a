//! Directory listings: one ListObjectsV2 page per 1000 entries.
//!
//! A directory is the set of keys under its prefix, grouped at '/'. Common
//! prefixes are subdirectories (implicit ones and `dir/` markers alike);
//! objects are files. A listing carries size and mtime, so `ls -l` after
//! `ls` needs no HEAD. Complete listings are cached for the metadata TTL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use super::inode::{Ino, Kind};
use super::store::ListPage;

/// Longest name the kernel accepts.
pub const NAME_MAX: usize = 255;

/// One entry of a directory, as the listing reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
    /// When what the listing said stops being trusted.
    pub expiry: Instant,
}

/// Whether an S3 key segment can be shown as a file name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains('\0')
        && !name.contains('/')
}

/// The entries of one page under `prefix`, in page order (prefixes first).
pub fn page_entries(prefix: &str, page: &ListPage, expiry: Instant) -> Vec<DirEntry> {
    let mut out = Vec::with_capacity(page.objects.len() + page.common_prefixes.len());
    for cp in &page.common_prefixes {
        let Some(name) = cp
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('/'))
        else {
            continue;
        };
        if !valid_name(name) {
            tracing::debug!(
                prefix = cp,
                "skipping prefix that is no valid directory name"
            );
            continue;
        }
        out.push(DirEntry {
            name: name.to_string(),
            kind: Kind::Dir,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
            expiry,
        });
    }
    for o in &page.objects {
        let Some(name) = o.key.strip_prefix(prefix) else {
            continue;
        };
        if name.is_empty() {
            // The directory's own marker object.
            continue;
        }
        if !valid_name(name) {
            tracing::debug!(key = o.key, "skipping key that is no valid file name");
            continue;
        }
        out.push(DirEntry {
            name: name.to_string(),
            kind: Kind::File,
            size: o.size,
            mtime: o.mtime,
            etag: o.etag.clone(),
            expiry,
        });
    }
    out
}

/// A directory's entries as they accumulate page by page.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
    index: HashMap<String, usize>,
}

impl Listing {
    /// Adds an entry; a directory shadows a file of the same name.
    pub fn add(&mut self, e: DirEntry) {
        match self.index.get(&e.name) {
            Some(&i) => {
                if self.entries[i].kind == Kind::File && e.kind == Kind::Dir {
                    self.entries[i] = e;
                }
            }
            None => {
                self.index.insert(e.name.clone(), self.entries.len());
                self.entries.push(e);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&DirEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Complete listings of recently listed directories.
#[derive(Debug, Default)]
pub struct DirCache {
    map: Mutex<HashMap<Ino, (Arc<Listing>, Instant)>>,
}

/// Listings bigger than this are streamed every time instead of cached.
pub const MAX_CACHED_ENTRIES: usize = 200_000;

impl DirCache {
    pub fn get(&self, ino: Ino, now: Instant) -> Option<Arc<Listing>> {
        let mut map = self.map.lock();
        match map.get(&ino) {
            Some((l, until)) if *until > now => Some(l.clone()),
            Some(_) => {
                map.remove(&ino);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, ino: Ino, listing: Arc<Listing>, until: Instant) {
        if listing.len() <= MAX_CACHED_ENTRIES {
            self.map.lock().insert(ino, (listing, until));
        }
    }

    pub fn invalidate(&self, ino: Ino) {
        self.map.lock().remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::store::ObjectInfo;

    fn obj(key: &str, size: u64) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
        }
    }

    #[test]
    fn markers_and_bad_names_are_skipped() {
        let page = ListPage {
            objects: vec![
                obj("d/", 0),
                obj("d/a b", 3),
                obj("d/ünï", 1),
                obj("d/..", 1),
            ],
            common_prefixes: vec!["d/sub/".into(), "d//".into(), "d/./".into()],
            next_token: None,
        };
        let names: Vec<_> = page_entries("d/", &page, Instant::now())
            .into_iter()
            .map(|e| (e.name, e.kind, e.size))
            .collect();
        assert_eq!(
            names,
            vec![
                ("sub".to_string(), Kind::Dir, 0),
                ("a b".to_string(), Kind::File, 3),
                ("ünï".to_string(), Kind::File, 1),
            ]
        );
    }

    #[test]
    fn a_directory_shadows_a_file_of_the_same_name() {
        let now = Instant::now();
        let mut l = Listing::default();
        let f = page_entries(
            "",
            &ListPage {
                objects: vec![obj("a", 1)],
                ..Default::default()
            },
            now,
        );
        let d = page_entries(
            "",
            &ListPage {
                common_prefixes: vec!["a/".into()],
                ..Default::default()
            },
            now,
        );
        l.add(f[0].clone());
        l.add(d[0].clone());
        l.add(f[0].clone());
        assert_eq!(l.len(), 1);
        assert_eq!(l.get("a").unwrap().kind, Kind::Dir);
    }

    #[test]
    fn overlong_names_are_rejected() {
        assert!(valid_name(&"x".repeat(255)));
        assert!(!valid_name(&"x".repeat(256)));
        assert!(!valid_name(""));
    }
}
