//! Text helpers every sink needs for its messages: destination error bodies and error chains become
//! one bounded line (they can be multi-line stack traces or megabytes of HTML from a proxy), cut on a
//! character boundary.

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// Whitespace runs (newlines included) collapsed to one space, then at most `max` bytes, with `…`
/// when cut.
pub fn one_line(s: &str, max: usize) -> String {
    let joined: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.len() <= max {
        return joined;
    }
    format!("{}…", truncate_bytes(&joined, max))
}

/// An error and its causes, `outer: cause: root`, skipping a cause whose text the message already
/// holds. The causes carry the useful part ("invalid peer certificate: UnknownIssuer" under "client
/// error (Connect)").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries_and_marks_the_cut() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("abc", 10), "abc");
        assert_eq!(one_line("a\n  b\tc", 100), "a b c");
        assert_eq!(one_line("ééé", 3), "é…");
    }

    #[test]
    fn error_chains_keep_every_distinct_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::Other, "UnknownIssuer");
        let outer = std::io::Error::new(std::io::ErrorKind::Other, inner);
        assert_eq!(error_chain(&outer), "UnknownIssuer", "a cause repeated by its wrapper is not added twice");
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(error_chain(&Wrap(std::io::Error::new(std::io::ErrorKind::Other, "UnknownIssuer"))), "client error (Connect): UnknownIssuer");
    }
}
