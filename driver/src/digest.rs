//! Short, stable names derived from longer text (share keys, mount keys,
//! marker file names): the first bytes of a SHA-256, in hex. One helper, so
//! every name in the state directory is made the same way. Names derived
//! from secrets (an S3 identity) use [`keyed_hex`], an HMAC under a node-local
//! key, so that a name seen in a log or a path cannot be used to test guesses.

use sha2::{Digest, Sha256};

/// The first `bytes` bytes of SHA-256 of `data`, as `2 * bytes` hex digits.
pub fn short_hex(data: &[u8], bytes: usize) -> String {
    let d = Sha256::digest(data);
    hex::encode(&d[..bytes.min(d.len())])
}

/// The first `bytes` bytes of HMAC-SHA256 (RFC 2104) of `data` under `key`,
/// as `2 * bytes` hex digits.
pub fn keyed_hex(key: &[u8], data: &[u8], bytes: usize) -> String {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(data)
        .finalize();
    let d = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize();
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

    #[test]
    fn keyed_hex_is_hmac_sha256() {
        // RFC 4231, test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            keyed_hex(b"Jefe", b"what do ya want for nothing?", 32),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            keyed_hex(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                32
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(keyed_hex(b"k", b"x", 8).len(), 16);
        assert_ne!(keyed_hex(b"k1", b"x", 8), keyed_hex(b"k2", b"x", 8));
    }
}
