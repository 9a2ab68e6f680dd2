//! What the crate reports on stderr: problems it recovered from, or could not.
//!
//! `eprintln!` panics when writing to stderr fails (a closed or broken stderr), and a
//! panic is the last thing the primary, or a worker between `fork` and its worker
//! function, may do; these writes ignore errors instead.

use std::io::Write;

/// Writes `cluster: …` and a newline to stderr, ignoring failure.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "cluster: {args}");
}

/// `report!("…", …)`: [`write()`] with `format!` syntax.
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::log::write(format_args!($($arg)*))
    };
}
pub(crate) use report;
