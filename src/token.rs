//! HTTP tokens (RFC 9110 §5.6.2): the syntax of cookie names and of many header parameters.

/// A byte of an HTTP token (RFC 9110 `tchar`), which is also what a cookie name may hold.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::is_tchar;

    #[test]
    fn tchar_is_exactly_the_rfc_9110_set() {
        let expected: Vec<u8> = (0u8..=127)
            .filter(|b| b.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(char::from(*b)))
            .collect();
        let actual: Vec<u8> = (0u8..=255).filter(|&b| is_tchar(b)).collect();
        assert_eq!(actual, expected);
        assert_eq!(actual.len(), 62 + 15);
        for b in *b"()<>@,;:\\\"/[]?={} \t\x7f" {
            assert!(!is_tchar(b), "{b}");
        }
    }
}
