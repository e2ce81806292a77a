//! Hub users and the names their homes and records carry on disk, both ways.
//!
//! Since hubfs reads the hub user from the PVC annotation, homes, records and
//! CSI descriptions are keyed by the real hub name (`jmiller@stsci.edu`,
//! encoded by [`UserKey`]). Installs made before that keyed them by the PVC
//! name minus `claim-`, i.e. KubeSpawner's slug of the user
//! (`jmiller-stsci-edu---77689c6d`, or `jmiller-40stsci-2eedu` under the
//! legacy `escape` scheme), and the static-PVC EFS setup's volume made
//! `home/{username}` with the escaped name. This module knows those *legacy
//! names*:
//!
//! * forward, from a hub name to every name KubeSpawner may have given it
//!   ([`legacy_names`], [`legacy_server_names`]): needs nothing but the name;
//! * backward, from a legacy name to the hub user ([`Identities`]): slugs are
//!   one-way, so this needs the hub users, learnt from the hub's user list and
//!   from the records (which carry the real name in `user:`).
//!
//! [`adopt_record`] moves a record made under a legacy name to the hub name;
//! [`home_dir`] and [`meta_file`] find a home and its description under
//! either name, so nothing made before is lost or duplicated.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;

use crate::lease::Lease;
use crate::slugs::{self, SlugScheme};
use crate::store::{Store, StoreError, LOCK_FILE, RECORD_FILE};
use crate::userkey::UserKey;

/// Directory of the CSI controller's per-user descriptions below a users dir.
pub const META_DIR: &str = ".hubfs";

/// The PVC name templates KubeSpawner used by default (z2jh 3 and 4).
const PVC_TEMPLATES: [&str; 2] = ["{user_server}", "{username}--{servername}"];

/// The other names a home or record of `user`'s default server may carry:
/// its slugs in both schemes (`{username}` = `{user_server}` for the default
/// server), without `user` itself, without duplicates.
pub fn legacy_names(user: &str) -> Vec<String> {
    legacy_server_names(user, "")
}

/// The names the home of one server of `user` was given before hubfs read
/// the annotation: the PVC name minus `claim-` for both schemes and both
/// default templates. `server` is `""` for the default server.
pub fn legacy_server_names(user: &str, server: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scheme in [SlugScheme::Escape, SlugScheme::Safe] {
        for t in PVC_TEMPLATES {
            let n = slugs::expand(t, user, server, scheme);
            if n != user && !n.is_empty() && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// A hub user and, for a named server's PVC, the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubName {
    pub user: String,
    pub server: Option<String>,
}

#[derive(Debug, Default)]
struct Known {
    /// Hub users by their own names (from the hub's list).
    users: HashSet<String>,
    /// Users that have a record; not proof of a hub user, since a record
    /// made before may carry a slug in `user:`.
    recorded: HashSet<String>,
    /// Legacy name -> (user, whether the hub listed that user); `None` when
    /// two users claim it (never guessed).
    legacy: HashMap<String, Option<(String, bool)>>,
    /// Whether the records were read once.
    from_store: bool,
}

impl Known {
    fn add_legacy(&mut self, user: &str, names: Vec<String>, from_hub: bool) {
        for n in names {
            match self.legacy.get(&n).cloned() {
                Some(Some((other, _))) if other != user => {
                    tracing::warn!(name = %n, first = %other, second = %user,
                        "two users share a legacy name; it is matched to neither");
                    self.legacy.insert(n, None);
                }
                Some(Some((_, was_hub))) => {
                    self.legacy
                        .insert(n, Some((user.to_owned(), was_hub || from_hub)));
                }
                Some(None) => {}
                None => {
                    self.legacy.insert(n, Some((user.to_owned(), from_hub)));
                }
            }
        }
    }

    /// The user `name` is a legacy name of. A user learnt only from the
    /// records does not claim a name that has a record of its own: without
    /// the hub, `a-2eb` may be a real user as well as `a.b`'s escaped name.
    fn legacy_user(&self, name: &str) -> Option<String> {
        match self.legacy.get(name)? {
            Some((user, from_hub)) if *from_hub || !self.recorded.contains(name) => {
                Some(user.clone())
            }
            _ => None,
        }
    }
}

/// The backward map: legacy names to hub users, learnt as users are seen.
#[derive(Debug, Default)]
pub struct Identities {
    known: RwLock<Known>,
}

impl Identities {
    /// Learns a hub user and the names of its default server and `servers`.
    pub fn learn(&self, user: &str, servers: &[String]) {
        if UserKey::new(user).is_err() {
            return;
        }
        let mut k = self.known.write();
        if !k.users.insert(user.to_owned()) && servers.iter().all(|s| s.is_empty()) {
            return;
        }
        let mut names = legacy_names(user);
        for s in servers.iter().filter(|s| !s.is_empty()) {
            names.extend(legacy_server_names(user, s));
        }
        k.add_legacy(user, names, true);
    }

    /// Learns a user from its record (which names the hub user unless it was
    /// made under a slug before).
    fn learn_recorded(&self, user: &str) {
        let mut k = self.known.write();
        if k.recorded.insert(user.to_owned()) {
            k.add_legacy(user, legacy_names(user), false);
        }
    }

    /// Learns every user that has a record (records carry the hub name), once.
    pub fn learn_from_store(&self, store: &Store) {
        if self.known.read().from_store {
            return;
        }
        match store.scan() {
            Ok(scanned) => {
                for s in scanned {
                    if let crate::store::Scanned::Record(r) = s {
                        self.learn_recorded(&r.user);
                    }
                }
                self.known.write().from_store = true;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the records to learn user names"),
        }
    }

    /// Learns the hub's users (with their running servers) and adopts the
    /// records that were made under a legacy name of one of them, so the
    /// reaper matches hub activity to them. One scan of the records.
    pub fn learn_hub_users(&self, store: &Store, users: &[crate::hub::HubUser]) {
        for u in users {
            self.learn(&u.name, &u.running);
        }
        let have: HashSet<String> = match store.scan() {
            Ok(s) => s
                .into_iter()
                .filter_map(|s| match s {
                    crate::store::Scanned::Record(r) => Some(r.user),
                    crate::store::Scanned::Bad { .. } => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the records to adopt legacy ones");
                return;
            }
        };
        for u in users {
            if have.contains(&u.name) || !legacy_names(&u.name).iter().any(|n| have.contains(n)) {
                continue;
            }
            if let Err(e) = adopt_record(store, &u.name) {
                tracing::warn!(user = %u.name, error = %e, "cannot adopt a legacy record");
            }
        }
    }

    /// The hub user a name stands for: `None` when `name` is itself a known
    /// hub user or nothing is known about it. Named servers' legacy names
    /// (`{user}--{server}`) resolve to their user.
    pub fn resolve(&self, name: &str) -> Option<HubName> {
        let k = self.known.read();
        if k.users.contains(name) {
            return None;
        }
        if k.legacy.contains_key(name) {
            return k
                .legacy_user(name)
                .map(|user| HubName { user, server: None });
        }
        // `{user slug}--{server slug}` of a server the hub did not list:
        // the longest prefix before a `--` that is a user's slug.
        let mut best: Option<HubName> = None;
        let b = name.as_bytes();
        for i in (1..b.len().saturating_sub(2)).filter(|&i| b[i..].starts_with(b"--")) {
            let (head, tail) = (&name[..i], &name[i + 2..]);
            let user = if k.users.contains(head) {
                Some(head.to_owned())
            } else {
                k.legacy_user(head)
            };
            if let Some(user) = user {
                best = Some(HubName {
                    user,
                    server: Some(tail.to_owned()),
                });
            }
        }
        best
    }

    /// The hub user's name for `name`: the resolved user, or `name` itself.
    pub fn canonical(&self, name: &str) -> String {
        match self.resolve(name) {
            Some(h) => {
                tracing::debug!(legacy = %name, user = %h.user, server = ?h.server, "legacy name matched to hub user");
                h.user
            }
            None => name.to_owned(),
        }
    }

    /// The names among `asked` that stand for another hub user: (name, user).
    pub fn aliases(&self, asked: &[String]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for name in asked {
            let user = self.canonical(name);
            if &user != name && !out.iter().any(|(n, _)| n == name) {
                out.push((name.clone(), user));
            }
        }
        out
    }

    /// [`Identities::canonical`] after learning the records once, and with any
    /// legacy record of the result moved to the hub name ([`adopt_record`]).
    pub fn canonical_in(&self, store: &Store, name: &str) -> String {
        self.learn_from_store(store);
        let user = self.canonical(name);
        if let Err(e) = adopt_record(store, &user) {
            tracing::warn!(%user, error = %e, "cannot adopt a legacy record");
        }
        user
    }
}

/// Whether an admin's `wanted` (a hub name or a slug) names the record of `have`.
pub fn names_match(wanted: &str, have: &str) -> bool {
    wanted == have || legacy_names(wanted).iter().any(|n| n == have)
}

/// Moves the record of `user` that an install before this version kept under
/// a legacy name to the hub name, when `user` has none of its own. The old
/// file is kept beside as `quota.yaml.adopted-by-<encoded user>`. Returns the
/// legacy name adopted.
pub fn adopt_record(store: &Store, user: &str) -> Result<Option<String>, StoreError> {
    let key = UserKey::new(user).map_err(|e| StoreError::BadUser {
        user: user.into(),
        why: e.to_string(),
    })?;
    if store.load(user)?.is_some() {
        return Ok(None);
    }
    for legacy in legacy_names(user) {
        let dir = store.user_dir(&legacy)?;
        if !dir.join(RECORD_FILE).exists() {
            continue;
        }
        let lock = Lease::acquire(
            &dir.join(LOCK_FILE),
            store.owner(),
            store.lease(),
            store.lease(),
            store.clock(),
        )?;
        let mut rec = match store.load(&legacy) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(%user, %legacy, error = %e, "legacy record not adopted");
                continue;
            }
        };
        rec.user = user.to_owned();
        let updated = store.update(user, || rec.clone(), |_| false)?;
        if updated.created {
            let from = dir.join(RECORD_FILE);
            let aside = dir.join(format!("{RECORD_FILE}.adopted-by-{}", key.encoded()));
            std::fs::rename(&from, &aside).map_err(|e| StoreError::Io {
                path: from.display().to_string(),
                source: e,
            })?;
            tracing::info!(%user, %legacy, kept = %aside.display(), "record made under a legacy name adopted");
        }
        lock.release();
        return Ok(Some(legacy));
    }
    Ok(None)
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// The home of `user` below `users_dir`: its own encoded name if that
/// exists, else the first legacy name that exists (a home provisioned before
/// hubfs read the annotation, not adopted yet), else its own name.
pub fn home_dir(users_dir: &Path, user: &str) -> PathBuf {
    let own = match UserKey::new(user) {
        Ok(k) => users_dir.join(k.encoded()),
        Err(_) => return users_dir.join(META_DIR).join("invalid-user"),
    };
    if is_real_dir(&own) {
        return own;
    }
    legacy_names(user)
        .into_iter()
        .filter_map(|n| UserKey::new(&n).ok())
        .map(|k| users_dir.join(k.encoded()))
        .find(|p| is_real_dir(p))
        .unwrap_or(own)
}

/// The CSI controller's description of `user`'s volume
/// (`<users dir>/.hubfs/<encoded>.json`), under its own or a legacy name.
pub fn meta_file(users_dir: &Path, user: &str) -> Option<PathBuf> {
    let dir = users_dir.join(META_DIR);
    std::iter::once(user.to_owned())
        .chain(legacy_names(user))
        .filter_map(|n| UserKey::new(&n).ok())
        .map(|k| dir.join(format!("{}.json", k.encoded())))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Defaults;
    use crate::record::QuotaRecord;
    use std::time::Duration;

    #[test]
    fn forward_names_are_kubespawners_slugs() {
        assert_eq!(
            legacy_names("jmiller@stsci.edu"),
            ["jmiller-40stsci-2eedu", "jmiller-stsci-edu---77689c6d"]
        );
        assert!(
            legacy_names("alice").is_empty(),
            "{:?}",
            legacy_names("alice")
        );
        assert!(legacy_server_names("alice", "gpu").contains(&"alice--gpu".to_owned()));
        assert!(names_match(
            "carol.smith@example.org",
            "carol-2esmith-40example-2eorg"
        ));
        assert!(!names_match("carol.smith@example.org", "carol"));
    }

    #[test]
    fn backward_needs_the_user_and_never_guesses() {
        let ids = Identities::default();
        assert_eq!(ids.resolve("jmiller-stsci-edu---77689c6d"), None);
        ids.learn("jmiller@stsci.edu", &[]);
        ids.learn("carol.smith@example.org", &["gpu".into()]);
        let user = |n: &str| ids.resolve(n).map(|h| h.user);
        assert_eq!(
            user("jmiller-stsci-edu---77689c6d").as_deref(),
            Some("jmiller@stsci.edu")
        );
        assert_eq!(
            user("jmiller-40stsci-2eedu").as_deref(),
            Some("jmiller@stsci.edu")
        );
        assert_eq!(user("jmiller@stsci.edu"), None, "a hub name is itself");
        // A named server the hub did not list still belongs to its user.
        let h = ids
            .resolve("jmiller-stsci-edu---77689c6d--analysis")
            .unwrap();
        assert_eq!(
            (h.user.as_str(), h.server.as_deref()),
            ("jmiller@stsci.edu", Some("analysis"))
        );
        assert_eq!(
            user("carol-2esmith-40example-2eorg--gpu").as_deref(),
            Some("carol.smith@example.org")
        );
        assert_eq!(ids.canonical("stranger"), "stranger");
        // Hub user "a-2eb" exists literally, and "a.b" escapes to the same:
        // the literal user keeps its name; the legacy one is nobody's.
        ids.learn("a-2eb", &[]);
        ids.learn("a.b", &[]);
        assert_eq!(ids.resolve("a-2eb"), None);
        // A hub user literally named like another's server slug keeps it.
        ids.learn("u", &["x".into()]);
        assert_eq!(user("u--x").as_deref(), Some("u"));
        ids.learn("u--x", &[]);
        assert_eq!(ids.resolve("u--x"), None);
    }

    #[test]
    fn legacy_records_are_adopted_once_and_kept_beside() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(
            d.path(),
            "t",
            Duration::from_secs(5),
            Duration::from_secs(5),
            std::sync::Arc::new(crate::clock::SystemClock),
        )
        .unwrap();
        let defaults = Defaults::default();
        let mut old = QuotaRecord::new("jmiller-stsci-edu---77689c6d", &defaults);
        old.actual_bytes = 1234;
        store
            .update(&old.user.clone(), || old.clone(), |_| false)
            .unwrap();
        let ids = Identities::default();
        ids.learn("jmiller@stsci.edu", &[]);
        assert_eq!(
            ids.canonical_in(&store, "jmiller-stsci-edu---77689c6d"),
            "jmiller@stsci.edu"
        );
        let rec = store.load("jmiller@stsci.edu").unwrap().unwrap();
        assert_eq!(
            (rec.user.as_str(), rec.actual_bytes),
            ("jmiller@stsci.edu", 1234)
        );
        assert_eq!(store.load("jmiller-stsci-edu---77689c6d").unwrap(), None);
        assert!(d
            .path()
            .join("jmiller-stsci-edu---77689c6d/quota.yaml.adopted-by-jmiller_40stsci_2eedu")
            .is_file());
        // A second time there is nothing left to adopt.
        assert_eq!(adopt_record(&store, "jmiller@stsci.edu").unwrap(), None);
        // Known from records only: `a-2eb` has a record of its own, so it is
        // not taken for `a.b`'s escaped name; a slug without one is.
        for u in ["a-2eb", "a.b", "carol.smith@example.org"] {
            store
                .update(u, || QuotaRecord::new(u, &defaults), |_| false)
                .unwrap();
        }
        let fresh = Identities::default();
        fresh.learn_from_store(&store);
        assert_eq!(fresh.resolve("a-2eb"), None);
        assert_eq!(
            fresh.canonical("carol-2esmith-40example-2eorg"),
            "carol.smith@example.org"
        );
        assert_eq!(
            fresh.canonical("jmiller-40stsci-2eedu"),
            "jmiller@stsci.edu"
        );
    }

    #[test]
    fn homes_and_descriptions_are_found_under_either_name() {
        let d = tempfile::tempdir().unwrap();
        let users = d.path();
        assert_eq!(
            home_dir(users, "carol.smith@example.org"),
            users.join("carol_2esmith_40example_2eorg")
        );
        std::fs::create_dir(users.join("carol-2esmith-40example-2eorg")).unwrap();
        assert_eq!(
            home_dir(users, "carol.smith@example.org"),
            users.join("carol-2esmith-40example-2eorg")
        );
        std::fs::create_dir(users.join("carol_2esmith_40example_2eorg")).unwrap();
        assert_eq!(
            home_dir(users, "carol.smith@example.org"),
            users.join("carol_2esmith_40example_2eorg")
        );
        // A symlink under a legacy name is never followed.
        std::os::unix::fs::symlink("/etc", users.join("jmiller-40stsci-2eedu")).unwrap();
        assert_eq!(
            home_dir(users, "jmiller@stsci.edu"),
            users.join("jmiller_40stsci_2eedu")
        );
        assert_eq!(meta_file(users, "jmiller@stsci.edu"), None);
        std::fs::create_dir(users.join(META_DIR)).unwrap();
        std::fs::write(users.join(".hubfs/jmiller-stsci-edu---77689c6d.json"), "{}").unwrap();
        assert_eq!(
            meta_file(users, "jmiller@stsci.edu"),
            Some(users.join(".hubfs/jmiller-stsci-edu---77689c6d.json"))
        );
    }
}
