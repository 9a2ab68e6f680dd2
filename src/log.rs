//! What the crate reports on stderr: problems it recovered from, or could not.
//!
//! `eprintln!` panics when writing to stderr fails (a closed or broken stderr), and a
//! panic is the last thing the primary, or a worker between `fork` and its worker
//! function, may do; these writes ignore errors instead.

use std::io::Write;

/// Writes `cluster: …` and a newline to stderr in one `write`, so lines from several
/// processes sharing stderr do not interleave; ignores failure.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let line = format!("cluster: {args}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `report!("…", …)`: [`write()`] with `format!` syntax.
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::log::write(format_args!($($arg)*))
    };
}
pub(crate) use report;
