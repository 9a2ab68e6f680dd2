//! Text that someone else chose, made safe to print: [`Escaped`].
//!
//! A worker chooses the addresses it asks for, and a client the path it binds before it
//! connects; the primary prints both (`Error::ListenDenied`, `ListenError`, its own
//! reports on stderr, an application's log of `Event`s). Printed raw, a `\n` in a Unix
//! socket path forges a whole log line, and `ESC [ 2 J` clears the terminal of whoever
//! reads the log, even with `Builder::silent` (the worker never writes to stderr
//! itself: the primary does it for it). So every `Display` of such text goes through
//! [`Escaped`], which writes what is printable as it is and everything else as an
//! escape, Rust's way (`\n`, `\u{1b}`), on one line.

use std::fmt::{self, Write};

/// `Display`s bytes that came from outside the primary as one line of printable text:
/// UTF-8 as it is, except
/// - `\n`, `\r`, `\t` as those two characters;
/// - every other control character (C0, DEL, C1: what `char::is_control` says) and the
///   invisible formatting characters that reorder or hide text (bidirectional
///   overrides and isolates, zero-width characters, the line and paragraph
///   separators U+2028 and U+2029) as `\u{HEX}`, as `char::escape_debug` writes them;
/// - bytes that are not UTF-8 as `\xHH`.
///
/// Nothing else is changed, so an address without such characters prints as it always
/// did and still parses back (a backslash stays a backslash: text that *looks* like an
/// escape is possible, a control character reaching the output is not).
#[derive(Clone, Copy)]
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `from_utf8` piece by piece (`<[u8]>::utf8_chunks` is newer than the MSRV).
        let mut rest = self.0;
        while !rest.is_empty() {
            let (valid, invalid) = match std::str::from_utf8(rest) {
                Ok(all) => (all, 0),
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `error_len` is None for a sequence cut short at the end.
                    let n = e.error_len().unwrap_or(bad.len());
                    (std::str::from_utf8(good).unwrap_or_default(), n)
                }
            };
            write_valid(f, valid)?;
            let (bad, after) = rest[valid.len()..].split_at(invalid);
            for b in bad {
                write!(f, "\\x{b:02x}")?;
            }
            rest = after;
        }
        Ok(())
    }
}

/// Writes text, escaping what [`needs_escape`].
fn write_valid(f: &mut fmt::Formatter<'_>, valid: &str) -> fmt::Result {
    // The common case, an ordinary path or name: one write.
    if !valid.chars().any(needs_escape) {
        return f.write_str(valid);
    }
    for c in valid.chars() {
        match c {
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

/// Whether `c` is not printed as it is.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(b: &[u8]) -> String {
        Escaped(b).to_string()
    }

    #[test]
    fn printable_text_is_unchanged() {
        for s in [
            "/run/app.sock",
            "/tmp/it's \"here\"",
            "C:\\dir\\x",
            "/tmp/café ünïcödé 日本",
            "",
        ] {
            assert_eq!(show(s.as_bytes()), s);
        }
    }

    #[test]
    fn control_characters_are_escaped_on_one_line() {
        let forged = b"/tmp/x\n[primary] forged line\x1b[2J\r\t\x7f\0";
        assert_eq!(
            show(forged),
            "/tmp/x\\n[primary] forged line\\u{1b}[2J\\r\\t\\u{7f}\\u{0}"
        );
        // C1 controls (NEL, CSI) and the invisible reordering characters.
        assert_eq!(
            show("a\u{85}b\u{9b}c\u{202e}d\u{2028}e\u{200b}f".as_bytes()),
            "a\\u{85}b\\u{9b}c\\u{202e}d\\u{2028}e\\u{200b}f"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(
            show(b"/tmp/\xff\xfe\x1b.sock"),
            "/tmp/\\xff\\xfe\\u{1b}.sock"
        );
        // A lone continuation byte after valid text, and a truncated sequence.
        assert_eq!(show(b"ok\x80\xe6\x97"), "ok\\x80\\xe6\\x97");
    }

    #[test]
    fn every_byte_value_prints_without_a_control_character() {
        for b in 0..=255u8 {
            let out = show(&[b'<', b, b'>']);
            assert!(
                !out.chars().any(|c| c.is_control()),
                "byte {b:#x} printed as {out:?}"
            );
        }
    }
}
