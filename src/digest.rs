//! The short SHA-256 names of things that must not be stored or logged as they are (session
//! ids, user ids, rate-limit keys).

use sha2::{Digest, Sha256};

/// Lowercase hex of the first 128 bits of SHA-256 over `parts`, concatenated: 32 characters.
///
/// These strings are parts of stored key names: the output must never change.
pub(crate) fn sha256_hex128(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sha256_hex128;

    #[test]
    fn first_half_of_the_sha256_in_lowercase_hex() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(sha256_hex128(&[b"abc"]), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(
            sha256_hex128(&[b"a", b"", b"bc"]),
            "ba7816bf8f01cfea414140de5dae2223"
        );
        // SHA-256("") = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
        assert_eq!(sha256_hex128(&[]), "e3b0c44298fc1c149afbf4c8996fb924");
    }
}
