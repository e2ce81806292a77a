//! hubfs-sandbox: least privilege for hubfs's FUSE servers.
//!
//! A FUSE server acts for one user or one bucket identity on a node full of
//! other people's notebooks; a bug in it, or in any crate it links, must not
//! be root there. This leaf crate (it depends on no other hubfs crate) holds
//! everything privilege-related, so the mounter, both kinds of server and
//! every test share one implementation (see `LAUNCH.md`'s agreement and
//! `docs/architecture.md`):
//!
//! * [`drop_to`] with [`Privileges`]: a server, once mounted and before its
//!   first request, becomes its kind's final uid/gid/groups with exactly
//!   its kept capabilities, `no_new_privs`, and optionally a seccomp
//!   allow-list ([`seccomp`]). It runs with one thread only (capabilities
//!   are per thread) and reads its own status back.
//! * [`launch`]: the launcher's side: before a child's exec, `no_new_privs`
//!   and a bounding set reduced to what that kind needs to mount and drop.
//! * [`guardian`]: the unmounting remainder of a dropped server that no
//!   mounter watches (started by hand).
//! * [`tree::own_tree`]: hands a directory (a data cache) to the uid a
//!   server becomes, following no planted symlink.
//! * [`status::Status`]: the privilege lines of `/proc/PID/status`, the one
//!   parser of every privilege test and figure.
//! * [`caps`]: the capability set type ([`Caps`]) and the kernel's names.

pub mod caps;
pub mod guardian;
pub mod launch;
mod privileges;
pub mod seccomp;
pub mod status;
pub mod tree;

pub use caps::Caps;
pub use guardian::Guardian;
pub use privileges::{drop_to, threads, Privileges, SandboxError};
pub use status::Status;
