//! User keys and their on-disk encoding.
//!
//! A user's home is `<share>/<basePath>/<encoded user>` and their quota record
//! lives at `<control-dir>/<encoded user>/quota.yaml` (the EFS quota monitor's
//! `<encoded_username>`). The name comes from the outside world (a PVC name, a
//! hub user name) and may be hostile, so the encoding is the single place that
//! guarantees a safe path component:
//!
//! * bytes in `[a-z0-9-]` stand for themselves; every other byte of the UTF-8
//!   form is written `_xx` (lower-case hex). `_` is not in the safe set, so the
//!   mapping is injective and reversible;
//! * the result never contains `/` or NUL and is never `.` or `..` (a dot is
//!   always escaped), and never starts with `.` (hidden bookkeeping entries
//!   such as `.hubfs` can therefore never collide with a user);
//! * the result is at most [`MAX_ENCODED_LEN`] bytes; longer names are refused
//!   rather than truncated, because truncation would break reversibility.
//!
//! Safe characters are the ones KubeSpawner already produces in PVC names, so
//! a typical `claim-alice` becomes the directory `alice`.

use std::fmt;

/// The longest encoded name accepted: a path component must fit in NAME_MAX
/// (255) and we keep room for suffixes such as `.archived-20260101T000000Z`.
pub const MAX_ENCODED_LEN: usize = 200;

/// Why a user name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("user name is empty")]
    Empty,
    #[error("user name contains a control character (U+{0:04X})")]
    ControlChar(u32),
    #[error(
        "user name is too long: its encoded form has {0} bytes, the limit is {MAX_ENCODED_LEN}"
    )]
    TooLong(usize),
    #[error("not a valid encoded user name: {0}")]
    BadEncoding(String),
}

/// A validated user name together with its encoded directory name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    name: String,
    encoded: String,
}

fn is_safe(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

impl UserKey {
    /// Validates a user name and computes its encoding.
    pub fn new(name: &str) -> Result<Self, EncodeError> {
        if name.is_empty() {
            return Err(EncodeError::Empty);
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(EncodeError::ControlChar(c as u32));
        }
        let mut encoded = String::with_capacity(name.len());
        for &b in name.as_bytes() {
            if is_safe(b) {
                encoded.push(b as char);
            } else {
                encoded.push('_');
                encoded.push_str(&format!("{b:02x}"));
            }
            if encoded.len() > MAX_ENCODED_LEN {
                // Report the full length so the message tells the admin by how much.
                let full = name
                    .bytes()
                    .map(|b| if is_safe(b) { 1 } else { 3 })
                    .sum::<usize>();
                return Err(EncodeError::TooLong(full));
            }
        }
        Ok(Self {
            name: name.to_owned(),
            encoded,
        })
    }

    /// Parses an encoded directory name back into a key. Only canonical
    /// encodings are accepted, so `decode(e).encoded() == e` always holds.
    pub fn decode(encoded: &str) -> Result<Self, EncodeError> {
        let bad = || EncodeError::BadEncoding(encoded.escape_default().to_string());
        let bytes = encoded.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if is_safe(b) {
                out.push(b);
                i += 1;
            } else if b == b'_' && i + 3 <= bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).map_err(|_| bad())?;
                if hex.bytes().any(|h| h.is_ascii_uppercase()) {
                    return Err(bad());
                }
                let v = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                if is_safe(v) {
                    return Err(bad()); // not canonical
                }
                out.push(v);
                i += 3;
            } else {
                return Err(bad());
            }
        }
        let name = String::from_utf8(out).map_err(|_| bad())?;
        let key = Self::new(&name)?;
        if key.encoded != encoded {
            return Err(bad());
        }
        Ok(key)
    }

    /// The user name as the hub knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory name: safe as a single path component.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey({:?})", self.name)
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(UserKey::new("alice").unwrap().encoded(), "alice");
        assert_eq!(
            UserKey::new("jane-doe-42").unwrap().encoded(),
            "jane-doe-42"
        );
        assert_eq!(
            UserKey::new("jmiller@stsci.edu").unwrap().encoded(),
            "jmiller_40stsci_2eedu"
        );
    }

    #[test]
    fn hostile_names_never_escape() {
        for name in ["..", ".", "../../etc", "a/b", "/", "~root", ".hubfs", "A"] {
            let k = UserKey::new(name).unwrap();
            let e = k.encoded();
            assert!(!e.contains('/'), "{name:?} -> {e:?}");
            assert!(!e.starts_with('.'), "{name:?} -> {e:?}");
            assert_ne!(e, "..");
            assert_ne!(e, ".");
            assert_eq!(UserKey::decode(e).unwrap().name(), name);
        }
        assert_eq!(UserKey::new("..").unwrap().encoded(), "_2e_2e");
        assert_eq!(UserKey::new("a\0b"), Err(EncodeError::ControlChar(0)));
        assert_eq!(UserKey::new(""), Err(EncodeError::Empty));
    }

    #[test]
    fn unicode_is_escaped_bytewise() {
        let k = UserKey::new("zoë").unwrap();
        assert_eq!(k.encoded(), "zo_c3_ab");
        assert_eq!(UserKey::decode("zo_c3_ab").unwrap().name(), "zoë");
    }

    #[test]
    fn long_names_are_refused_with_their_length() {
        let long = "a".repeat(300);
        assert_eq!(UserKey::new(&long), Err(EncodeError::TooLong(300)));
        let ok = "a".repeat(MAX_ENCODED_LEN);
        assert!(UserKey::new(&ok).is_ok());
        // Escapes count three bytes each.
        let dots = ".".repeat(70);
        assert_eq!(UserKey::new(&dots), Err(EncodeError::TooLong(210)));
    }

    #[test]
    fn non_canonical_encodings_are_rejected() {
        for e in ["", "_", "_2", "_2E", "_61", "a_zz", "A", "a/b", "..", "_c3"] {
            assert!(UserKey::decode(e).is_err(), "{e:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn roundtrip_and_injective(a in "\\PC{1,16}", b in "\\PC{1,16}") {
            let ka = UserKey::new(&a).unwrap();
            let kb = UserKey::new(&b).unwrap();
            let back = UserKey::decode(ka.encoded()).unwrap();
            prop_assert_eq!(back.name(), a.as_str());
            prop_assert_eq!(a == b, ka.encoded() == kb.encoded());
            prop_assert!(ka.encoded().bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'));
        }
    }
}
