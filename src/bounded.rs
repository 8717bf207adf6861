//! Length bounds for text that leaves the worker: dead-letter details, log
//! fields, AMQP short strings. Every value a publisher or APNs controls passes
//! through here before it is echoed anywhere, so that one hostile message can
//! never produce a header frame the broker refuses or a log line of megabytes.
//! Pure functions, no I/O.

/// Most bytes of a dead letter's `x-misiva-detail` (CONTRACT §3).
pub const DETAIL_BYTES: usize = 1024;

/// Most bytes of an AMQP short string (message ids, routing keys, tags).
pub const SHORT_STRING_BYTES: usize = 255;

/// Most characters of a publisher's value quoted inside an error message.
pub const QUOTE_CHARS: usize = 64;

/// The longest prefix of `text` that fits in `max` bytes without splitting a
/// character.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to [`DETAIL_BYTES`], with a marker when something was cut, so a
/// reader knows the detail is incomplete.
pub fn detail(text: &str) -> String {
    const MARK: &str = " [cut]";
    if text.len() <= DETAIL_BYTES {
        return text.to_owned();
    }
    let mut out = cut(text, DETAIL_BYTES - MARK.len()).to_owned();
    out.push_str(MARK);
    out
}

/// A publisher's value as it appears inside an error message: quoted and
/// escaped (control characters cannot forge log lines), and at most
/// [`QUOTE_CHARS`] characters of it, followed by its full size when longer.
pub fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(QUOTE_CHARS).collect();
    if chars.next().is_none() {
        format!("{head:?}")
    } else {
        format!("{head:?}… ({} bytes)", value.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_character_boundaries() {
        let table = [
            ("", 5, ""),
            ("abc", 5, "abc"),
            ("abcdef", 3, "abc"),
            // 'é' is two bytes: cutting inside it drops it whole.
            ("ééé", 3, "é"),
            ("ééé", 4, "éé"),
            ("日本", 5, "日"),
            ("日本", 0, ""),
        ];
        for (text, max, expected) in table {
            assert_eq!(cut(text, max), expected, "{text:?} at {max}");
        }
    }

    #[test]
    fn details_are_bounded_and_marked() {
        assert_eq!(detail("short"), "short");
        let long = "é".repeat(DETAIL_BYTES);
        let cut_detail = detail(&long);
        assert!(cut_detail.len() <= DETAIL_BYTES);
        assert!(cut_detail.ends_with(" [cut]"));
    }

    #[test]
    fn quotes_escape_and_shorten() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(200_000);
        let quoted = quote(&long);
        assert!(quoted.len() < 100, "{quoted}");
        assert!(quoted.ends_with("(200000 bytes)"));
    }
}
