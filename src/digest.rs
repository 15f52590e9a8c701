//! The short SHA-256 names of things that must not be stored or logged as they are (session
//! ids, user ids, rate-limit keys).

use sha2::{Digest, Sha256};

/// Lowercase hex of the first 128 bits of SHA-256 over `parts`, concatenated: 32 characters.
///
/// These strings are parts of stored key names: the output must never change.
#[cfg(feature = "session")]
pub(crate) fn sha256_hex128(parts: &[&[u8]]) -> String {
    let hex = sha256_hex128_bytes(parts);
    // ASCII hex digits: always UTF-8.
    String::from_utf8_lossy(&hex).into_owned()
}

/// [`sha256_hex128`] as bytes on the stack, for callers that place it inside a string of
/// their own (one allocation in all).
pub(crate) fn sha256_hex128_bytes(parts: &[&[u8]]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(&digest[..16]) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sha256_hex128_bytes;

    fn hex(parts: &[&[u8]]) -> String {
        let text = String::from_utf8(sha256_hex128_bytes(parts).to_vec()).unwrap();
        #[cfg(feature = "session")]
        assert_eq!(super::sha256_hex128(parts), text);
        text
    }

    #[test]
    fn first_half_of_the_sha256_in_lowercase_hex() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(hex(&[b"abc"]), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(hex(&[b"a", b"", b"bc"]), "ba7816bf8f01cfea414140de5dae2223");
        // SHA-256("") = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
        assert_eq!(hex(&[]), "e3b0c44298fc1c149afbf4c8996fb924");
    }
}
