//! The shared filesystem that holds every home, made reachable on this host.
//!
//! For `backend: nfs` the export is mounted once per host under the driver's
//! state directory and shared by every volume on it (the static-PVC EFS setup mounted the
//! whole EFS share once too); for `backend: local` the root is a directory
//! already on the host and must lie inside one of the `--allowed-root`s, since
//! volume ids naming it can be crafted. NFS shares are reference-counted by
//! [`Claims`] (marker files), so a driver restart does not forget who still uses a share.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::claims::Claims;
use crate::error::{DriverError, Result};
use crate::mounts::Mounts;
use crate::volume::Backend;

/// Resolves backends to directories on this host.
#[derive(Clone)]
pub struct Shares {
    mounts: Arc<dyn Mounts>,
    state_dir: PathBuf,
    allowed_roots: Vec<PathBuf>,
}

impl Shares {
    pub fn new(mounts: Arc<dyn Mounts>, state_dir: PathBuf, allowed_roots: Vec<PathBuf>) -> Self {
        Self {
            mounts,
            state_dir,
            allowed_roots,
        }
    }

    fn nfs_mount_point(&self, backend: &Backend) -> PathBuf {
        self.state_dir.join("shares").join(backend.share_key())
    }

    fn claims(&self, backend: &Backend) -> Claims {
        Claims::new(self.state_dir.join("share-users").join(backend.share_key()))
    }

    /// The root directory of the share on this host, mounting it if needed.
    pub fn root(&self, backend: &Backend, mount_options: &str) -> Result<PathBuf> {
        match backend {
            Backend::Local { root } => {
                if !self.allowed_roots.iter().any(|a| root.starts_with(a)) {
                    return Err(DriverError::Invalid(format!(
                        "local root {} is not inside an allowed root of this driver (--allowed-root: {})",
                        root.display(),
                        self.allowed_roots
                            .iter()
                            .map(|a| a.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                match std::fs::symlink_metadata(root) {
                    Ok(m) if m.is_dir() => Ok(root.clone()),
                    Ok(_) => Err(DriverError::FailedPrecondition(format!(
                        "local root {} is not a directory",
                        root.display()
                    ))),
                    Err(e) => Err(DriverError::FailedPrecondition(format!(
                        "local root {} is not available on this host: {e}",
                        root.display()
                    ))),
                }
            }
            Backend::Nfs { server, share } => {
                let mp = self.nfs_mount_point(backend);
                if self.mounts.mounted_at(&mp)?.is_some() {
                    return Ok(mp);
                }
                std::fs::create_dir_all(&mp).map_err(|e| DriverError::io("create", &mp, e))?;
                let data = nfs_options(server, mount_options)?;
                self.mounts
                    .mount(&format!("{server}:{share}"), &mp, "nfs4", &data)?;
                tracing::info!(server, share, mount_point = %mp.display(), "mounted NFS share");
                Ok(mp)
            }
        }
    }

    /// Records that `user` (a staging path) uses the share.
    pub fn acquire(&self, backend: &Backend, user: &Path) -> Result<()> {
        if matches!(backend, Backend::Local { .. }) {
            return Ok(());
        }
        self.claims(backend).add(user)
    }

    /// Drops `user`'s claim; unmounts an NFS share nobody uses any more.
    pub fn release(&self, backend: &Backend, user: &Path) -> Result<()> {
        if matches!(backend, Backend::Local { .. }) {
            return Ok(());
        }
        if self.claims(backend).remove(user)? == 0 {
            let mp = self.nfs_mount_point(backend);
            if self.mounts.mounted_at(&mp)?.is_some() {
                self.mounts.unmount(&mp)?;
                tracing::info!(mount_point = %mp.display(), "unmounted unused NFS share");
            }
        }
        Ok(())
    }
}

/// The kernel's NFS client takes the server address, not a name: mount(8)
/// normally resolves it, the syscall does not.
fn nfs_options(server: &str, user_options: &str) -> Result<String> {
    let addr = (server, 2049)
        .to_socket_addrs()
        .map_err(|e| {
            DriverError::FailedPrecondition(format!("cannot resolve NFS server {server}: {e}"))
        })?
        .next()
        .ok_or_else(|| {
            DriverError::FailedPrecondition(format!("NFS server {server} has no address"))
        })?;
    let mut opts = vec![format!("addr={}", addr.ip())];
    if !user_options
        .split(',')
        .any(|o| o.starts_with("vers=") || o.starts_with("nfsvers="))
    {
        opts.push("vers=4.1".into());
    }
    opts.extend(
        user_options
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_owned),
    );
    Ok(opts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::{FakeMounts, MountCall};

    #[test]
    fn nfs_share_is_mounted_once_and_released_by_the_last_user() {
        let state = tempfile::tempdir().unwrap();
        let fake = FakeMounts::default();
        let shares = Shares::new(Arc::new(fake.clone()), state.path().into(), vec![]);
        let b = Backend::Nfs {
            server: "127.0.0.1".into(),
            share: "/export".into(),
        };
        let r1 = shares.root(&b, "hard").unwrap();
        let r2 = shares.root(&b, "hard").unwrap();
        assert_eq!(r1, r2);
        let mounts: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| matches!(c, MountCall::Mount { .. }))
            .collect();
        assert_eq!(mounts.len(), 1);
        assert!(
            matches!(&mounts[0], MountCall::Mount { source, fs_type, data, .. }
            if source == "127.0.0.1:/export" && fs_type == "nfs4" && data == "addr=127.0.0.1,vers=4.1,hard")
        );
        shares.acquire(&b, Path::new("/stage/a")).unwrap();
        shares.acquire(&b, Path::new("/stage/b")).unwrap();
        shares.release(&b, Path::new("/stage/a")).unwrap();
        assert_eq!(fake.mount_count(), 1);
        shares.release(&b, Path::new("/stage/b")).unwrap();
        assert_eq!(fake.mount_count(), 0);
    }

    #[test]
    fn local_roots_must_be_allowed_and_present() {
        let dir = tempfile::tempdir().unwrap();
        let shares = Shares::new(
            Arc::new(FakeMounts::default()),
            dir.path().join("state"),
            vec![dir.path().into()],
        );
        let ok = Backend::Local {
            root: dir.path().into(),
        };
        assert_eq!(shares.root(&ok, "").unwrap(), dir.path());
        let outside = Backend::Local {
            root: "/etc".into(),
        };
        assert!(matches!(
            shares.root(&outside, ""),
            Err(DriverError::Invalid(_))
        ));
        let missing = Backend::Local {
            root: dir.path().join("nope"),
        };
        assert!(matches!(
            shares.root(&missing, ""),
            Err(DriverError::FailedPrecondition(_))
        ));
    }
}
