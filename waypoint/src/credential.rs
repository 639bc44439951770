//! Credentials a gateway reads from mounted Secrets, by name.

/// A credential's name as Kubernetes names Secrets (so it cannot leave the directory).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secret_names_are_read() {
        assert!(valid_name("bookinfo-cert"));
        assert!(valid_name("a.example.test"));
        for bad in ["", "../etc", "a/b", ".hidden", "UPPER", "x y"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
