//! Short, stable names derived from longer text (share keys, mount keys,
//! marker file names): the first bytes of a SHA-256, in hex. One helper, so
//! every name in the state directory is made the same way.

use sha2::{Digest, Sha256};

/// The first `bytes` bytes of SHA-256 of `data`, as `2 * bytes` hex digits.
pub fn short_hex(data: &[u8], bytes: usize) -> String {
    let d = Sha256::digest(data);
    hex::encode(&d[..bytes.min(d.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_stable_prefix_of_sha256() {
        // sha256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(short_hex(b"abc", 4), "ba7816bf");
        assert_eq!(short_hex(b"abc", 8), "ba7816bf8f01cfea");
        assert_eq!(short_hex(b"abc", 100).len(), 64);
        assert_ne!(short_hex(b"abd", 8), short_hex(b"abc", 8));
    }
}
