//! Path validation for everything that reaches the driver from outside.
//!
//! Paths arrive in StorageClass parameters, volume ids (which anyone able to
//! create a PV can craft) and CO requests. The driver runs as root, so a path
//! is accepted only in a normal form: absolute where it must be, no `.` or
//! `..` components, no NUL, and inside the area it belongs to. Checking the
//! lexical form up front means no later `join` can walk out of a base.

use std::path::{Component, Path, PathBuf};

use crate::error::DriverError;

fn check_chars(what: &str, s: &str) -> Result<(), DriverError> {
    if s.contains('\0') {
        return Err(DriverError::Invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// An absolute path with no `.`/`..` components (trailing slashes dropped).
pub fn absolute(what: &str, s: &str) -> Result<PathBuf, DriverError> {
    check_chars(what, s)?;
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(DriverError::Invalid(format!(
            "{what} must be an absolute path, got {s:?}"
        )));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(DriverError::Invalid(format!(
                    "{what} must not contain `.` or `..` components, got {s:?}"
                )))
            }
        }
    }
    Ok(out)
}

/// A relative path of normal components, from a value that may start with `/`
/// (`basePath: /users` means `users` below the share root). Empty means the root.
pub fn relative(what: &str, s: &str) -> Result<PathBuf, DriverError> {
    check_chars(what, s)?;
    let mut out = PathBuf::new();
    for part in s.split('/') {
        match part {
            "" => {}
            "." | ".." => {
                return Err(DriverError::Invalid(format!(
                    "{what} must not contain `.` or `..` components, got {s:?}"
                )))
            }
            p => out.push(p),
        }
    }
    Ok(out)
}

/// An absolute path that lies strictly inside one of `allowed`.
pub fn inside(what: &str, s: &str, allowed: &[PathBuf]) -> Result<PathBuf, DriverError> {
    let p = absolute(what, s)?;
    if allowed.iter().any(|a| p.starts_with(a) && p != *a) {
        Ok(p)
    } else {
        Err(DriverError::Invalid(format!(
            "{what} {s:?} is outside the allowed area ({})",
            allowed
                .iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_normalised_or_refused() {
        assert_eq!(absolute("p", "/a/b/").unwrap(), Path::new("/a/b"));
        assert_eq!(absolute("p", "//a//b").unwrap(), Path::new("/a/b"));
        assert!(absolute("p", "a/b").is_err());
        assert!(absolute("p", "/a/../b").is_err());
        assert!(absolute("p", "/a/./b").is_ok()); // Path drops inner `.` itself
        assert!(absolute("p", "/a\0b").is_err());
        assert!(absolute("p", "").is_err());
    }

    #[test]
    fn relative_paths_never_climb() {
        assert_eq!(relative("b", "/users").unwrap(), Path::new("users"));
        assert_eq!(
            relative("b", "home/users/").unwrap(),
            Path::new("home/users")
        );
        assert_eq!(relative("b", "/").unwrap(), Path::new(""));
        assert!(relative("b", "../etc").is_err());
        assert!(relative("b", "a/./b").is_err());
        assert!(relative("b", "a/\0").is_err());
    }

    #[test]
    fn inside_requires_a_strict_descendant() {
        let allowed = [PathBuf::from("/var/lib/kubelet")];
        assert!(inside("t", "/var/lib/kubelet/pods/x/mount", &allowed).is_ok());
        assert!(inside("t", "/var/lib/kubelet", &allowed).is_err());
        assert!(inside("t", "/var/lib/kubeletX/y", &allowed).is_err());
        assert!(inside("t", "/var/lib/kubelet/../../etc", &allowed).is_err());
        assert!(inside("t", "/etc/passwd", &allowed).is_err());
    }
}
