//! Capability sets: the one type every privilege decision of hubfs is
//! written in, with the kernel's names for messages, figures and tests.
//!
//! [`Caps`] is rustix's `CapabilitySet` (a `u64` bit mask, bit `n` being
//! capability number `n`, as in the `Cap*` lines of `/proc/PID/status`), so
//! a kind's list reads `Caps::CHOWN | Caps::FOWNER` and needs no conversion
//! on its way to `capset(2)`.

pub use rustix::thread::CapabilitySet as Caps;

/// The kernel's names of capabilities 0 to 40, by number.
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The highest capability number this kernel knows
/// (`/proc/sys/kernel/cap_last_cap`; 40 if it cannot be read).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n < 64)
        .unwrap_or(40)
}

/// Every capability this kernel knows: what a process that holds "all" has.
pub fn all() -> Caps {
    let n = last_cap();
    Caps::from_bits_retain(if n >= 63 {
        u64::MAX
    } else {
        (1u64 << (n + 1)) - 1
    })
}

/// The capabilities in `set`, one by one (bits in ascending order).
pub fn each(set: Caps) -> impl Iterator<Item = Caps> {
    let bits = set.bits();
    (0..64u32)
        .filter(move |n| bits & (1u64 << n) != 0)
        .map(|n| Caps::from_bits_retain(1u64 << n))
}

/// The name of capability number `n` (`CAP_SYS_ADMIN`), or `cap_<n>` for a
/// number newer than this table.
pub fn name(n: u32) -> String {
    NAMES
        .get(n as usize)
        .map(|s| (*s).to_string())
        .unwrap_or_else(|| format!("cap_{n}"))
}

/// `set` as the kernel names it: `CAP_CHOWN,CAP_SYS_ADMIN`, or `none`.
pub fn describe(set: Caps) -> String {
    if set.is_empty() {
        return "none".into();
    }
    each(set)
        .map(|c| name(c.bits().trailing_zeros()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The capability called `name` (`CAP_SYS_ADMIN`, `sys_admin` or
/// `SYS_ADMIN`), if there is one.
pub fn parse_name(name: &str) -> Option<Caps> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES
        .iter()
        .position(|n| *n == full)
        .map(|i| Caps::from_bits_retain(1u64 << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_with_the_bit_numbers() {
        assert_eq!(name(0), "CAP_CHOWN");
        assert_eq!(name(21), "CAP_SYS_ADMIN");
        assert_eq!(name(40), "CAP_CHECKPOINT_RESTORE");
        assert_eq!(name(41), "cap_41");
        assert_eq!(parse_name("sys_admin"), Some(Caps::SYS_ADMIN));
        assert_eq!(parse_name("CAP_SETPCAP"), Some(Caps::SETPCAP));
        assert_eq!(
            parse_name("CAP_CHECKPOINT_RESTORE"),
            Some(Caps::CHECKPOINT_RESTORE)
        );
        assert_eq!(parse_name("CAP_ROOT"), None);
        assert_eq!(describe(Caps::empty()), "none");
        assert_eq!(
            describe(Caps::SYS_ADMIN | Caps::CHOWN),
            "CAP_CHOWN,CAP_SYS_ADMIN"
        );
        assert_eq!(each(Caps::SETUID | Caps::SETGID).count(), 2);
    }

    #[test]
    fn all_is_what_the_kernel_knows() {
        let n = last_cap();
        assert!(n >= 40, "Linux >= 5.9 knows CAP_CHECKPOINT_RESTORE");
        assert_eq!(all().bits().count_ones(), n + 1);
        assert!(all().contains(Caps::SYS_ADMIN | Caps::CHECKPOINT_RESTORE));
    }
}
