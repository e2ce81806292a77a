//! The home layer: a passthrough FUSE filesystem over a user's directory on
//! the share that accounts usage as it is written and enforces the quota.
//!
//! The EFS quota monitor hubfs replaces learned usage from a `du` every four
//! hours, so users overshot their quota by terabytes before anyone knew.
//! Here every operation that changes what a home stores updates
//! [`usage::UsageCounters`] on the spot, growth past the hard limit fails
//! with EDQUOT, and the changes are reported to the
//! quota controller in batches ([`sink`]), whose answer can switch the home
//! to cleanup (no-write) mode while it stays mounted.
//!
//! * [`fs`]: the passthrough core (testable without the kernel): mount-wide
//!   state, lookups, creation and attributes; [`names`]: removing and
//!   renaming, and the locks that keep that exact; [`files`], [`dirs`], [`xattr`]: open
//!   files, listings and extended attributes; [`inodes`]: the inode table;
//!   [`caller`]: who asks and their credentials; [`identity`]: serving each
//!   request with them; [`reach`]: the search permission of a path walk;
//!   [`syscalls`]: the safe layer every system call goes through;
//! * [`iomode`]: which opens the kernel serves itself (passthrough reads);
//! * [`usage`]: counters, reservations, limits, cleanup mode;
//! * [`requests`]: counts of the FUSE requests served, by kind;
//! * [`ledger`]: the mount-time walk and changes made while it runs, counted once;
//! * [`sink`]: the `UsageSink` trait, its gRPC and fake implementations and
//!   the batching reporter;
//! * [`adapter`]: the `fuser` glue; [`session`]: mounting it all together;
//!   [`confine`]: the server's own privilege once mounted;
//!   [`handoff`]: the state a server hands to the next in a takeover.

pub mod adapter;
pub mod caller;
pub mod confine;
pub mod dirs;
pub mod error;
pub mod files;
pub mod fs;
pub mod handoff;
pub mod identity;
pub mod inodes;
pub mod iomode;
pub mod ledger;
pub mod names;
pub mod reach;
pub mod requests;
pub mod session;
pub mod sink;
pub mod syscalls;
pub mod usage;
pub mod xattr;

pub use confine::{server_privileges, Confinement, SERVER_CAPABILITIES};
pub use error::HomeError;
pub use fs::HomeFs;
pub use session::{
    mount, mount_confined, take_over, take_over_confined, HomeMount, HomeOptions, MountError,
};
#[cfg(any(test, feature = "test-util"))]
pub use sink::FakeSink;
pub use sink::{ControllerVerdict, GrpcSink, Reporter, UsageReport, UsageSink};
pub use usage::{Limits, QuotaError, UsageCounters, Zone};
