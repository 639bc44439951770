//! Path normalization before anything reads the path (Istio's default, and then some): RFC
//! 3986 dot segments removed, runs of slashes merged, percent-encoded unreserved characters
//! decoded and other escapes upper-cased. An encoded slash or backslash (`%2F`, `%5C`), a literal
//! backslash, or a path that does not start with `/` is refused: two components could read it
//! two ways. Routes and authorization see the normalized path, and it is what the endpoint gets,
//! so `/x/../admin`, `//admin` and `/%61dmin` are all `/admin` to every layer.

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// `%2F` or `%5C`: a slash that is not a separator.
    #[error("an encoded slash or backslash ({0}) in the path")]
    EncodedSeparator(String),
    /// A literal backslash.
    #[error("a backslash in the path")]
    Backslash,
    /// A `%` not followed by two hex digits.
    #[error("a malformed percent-encoding in the path")]
    BadEscape,
    /// Not an origin-form path.
    #[error("the path does not start with /")]
    NotAbsolute,
    /// The normalized path does not make a URI again.
    #[error("the normalized path is not a valid URI")]
    Invalid,
}

/// `uri` with its path normalized (its query untouched), or `None` if it already was.
pub(crate) fn normalize_uri(uri: &http::Uri) -> Result<Option<http::Uri>, PathError> {
    if already_normal(uri.path()) {
        return Ok(None);
    }
    let path = normalize(uri.path())?;
    if path == uri.path() {
        return Ok(None);
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| PathError::Invalid)?);
    http::Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::Invalid)
}

/// The normalized form of `path` (without its query).
pub(crate) fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        match segment {
            // Empty segments are runs of slashes (merged) or the leading one.
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` needs no work (most requests): no escape, backslash, run of slashes or dot
/// segment. Checked without allocating.
fn already_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.first() == Some(&b'/')
        && !bytes.iter().any(|b| matches!(b, b'%' | b'\\'))
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..")
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                if value == b'/' || value == b'\\' {
                    return Err(PathError::EncodedSeparator(format!(
                        "%{}",
                        String::from_utf8_lossy(hex).to_ascii_uppercase()
                    )));
                }
                if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                    out.push(char::from(value));
                } else {
                    out.push('%');
                    out.push_str(&String::from_utf8_lossy(hex).to_ascii_uppercase());
                }
                i += 3;
            }
            b => {
                // The path came from a parsed URI: it is ASCII.
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_path_is_one_path() {
        for spelling in [
            "/admin",
            "//admin",
            "/x/../admin",
            "/./admin",
            "/x/y/../../admin",
            "/../admin",
            "/%61dmin",
            "/%61%64min",
            "///x//..//admin",
        ] {
            assert_eq!(normalize(spelling).as_deref(), Ok("/admin"), "{spelling}");
        }
        assert_eq!(normalize("/a/b/").as_deref(), Ok("/a/b/"));
        assert_eq!(normalize("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert_eq!(normalize("/..").as_deref(), Ok("/"));
        assert_eq!(normalize("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(
            normalize("/a%3fb").as_deref(),
            Ok("/a%3Fb"),
            "escapes are upper-cased"
        );
        assert_eq!(normalize("/a%7eb").as_deref(), Ok("/a~b"));
    }

    #[test]
    fn the_query_is_kept_and_a_normal_uri_is_left_alone() {
        let uri: http::Uri = "/x/../reviews//1?user=a/../b".parse().expect("uri");
        let normalized = normalize_uri(&uri).expect("valid").expect("changed");
        assert_eq!(normalized, "/reviews/1?user=a/../b");
        let plain: http::Uri = "/reviews/1?x=1".parse().expect("uri");
        assert_eq!(normalize_uri(&plain), Ok(None));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert!(matches!(
            normalize("/a%2Fb"),
            Err(PathError::EncodedSeparator(_))
        ));
        assert!(matches!(
            normalize("/a%2fb"),
            Err(PathError::EncodedSeparator(_))
        ));
        assert!(matches!(
            normalize("/a%5cb"),
            Err(PathError::EncodedSeparator(_))
        ));
        assert_eq!(normalize("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("admin"), Err(PathError::NotAbsolute));
    }

    /// Property: a normalized path starts with `/`, holds no empty, `.` or `..` segment, and
    /// normalizing it again changes nothing; anything else is refused.
    #[test]
    fn normalizing_is_idempotent_and_leaves_no_dot_segments() {
        let mut g = weft_core::testing::Gen::new(3);
        let pieces = [
            "/", "//", "a", "b", ".", "..", "%2e", "%2E%2e", "%61", "%2F", "%5c", "\\", "%", "%4",
            "%zz", "%20", "~", "-", "_", "?",
        ];
        for _ in 0..5000 {
            let path = format!("/{}", g.string(&pieces, 12));
            let Ok(normalized) = normalize(&path) else {
                continue;
            };
            assert!(normalized.starts_with('/'), "{path} -> {normalized}");
            let inner = normalized.trim_end_matches('/');
            for segment in inner.split('/').skip(1) {
                assert!(
                    !segment.is_empty() && segment != "." && segment != "..",
                    "{path} -> {normalized}"
                );
            }
            assert_eq!(
                normalize(&normalized).as_deref(),
                Ok(normalized.as_str()),
                "{path}"
            );
        }
    }
}
