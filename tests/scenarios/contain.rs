//! What one worker can do to the rest: write into the application's log through what
//! the primary prints for it, signal its siblings, hold memory `max_rss` does not see.

use std::time::Duration;

use crate::util::check::{check, clean_end, exited_ok, Outcome, Spec};

const T: Duration = Duration::from_secs(10);

/// A worker (trusted, silenced: it writes nothing itself) asks for
/// `unix:/tmp/x\n[primary] forged line\x1b[2J`, outside the allowlist. The primary's
/// report of it (`Error::ListenDenied`, `Event::ListenFailed`, printed with `Display`
/// by the scenario server as an application would log them) is one line each, with
/// the newline and the ESC shown escaped: no line of the primary's output begins with
/// the forged text, and no ESC byte reaches its stdout or stderr.
pub fn log_injection_escaped() -> Outcome {
    let forged = "unix:/tmp/x\n[primary] forged line\x1b[2J";
    let shown = "unix:/tmp/x\\n[primary] forged line\\u{1b}[2J";
    let s = Spec {
        mode: "round-robin",
        workers: 1,
        listen: "127.0.0.1:0".into(),
        threads: 1,
        env: vec![
            ("SC_ALLOW", "127.0.0.1:0".into()),
            ("SC_ASK", forged.into()),
            ("SC_SILENT", "1".into()),
            ("SC_RESPAWN", "never".into()),
        ],
    };
    let (mut srv, _targets) = s.start()?;
    let denied = srv.seen_or_expect_containing("asked to listen on unix:/tmp/x", T)?;
    println!("    {denied}");
    check(
        denied.starts_with("error worker 1 ")
            && denied.contains(&format!("asked to listen on {shown}: refused")),
        || format!("the refusal is not one escaped line: {denied:?}"),
    )?;
    let failed = srv.seen_or_expect("listen-failed 1 unix:", T)?;
    check(
        failed.starts_with(&format!(
            "listen-failed 1 {shown} cannot listen on {shown}:"
        )),
        || format!("the failed listen is not one escaped line: {failed:?}"),
    )?;
    srv.signal("TERM")?;
    let end = exited_ok(&mut srv, T)?;
    // Lines of stderr come as `err: …`.
    let forged_line = srv.seen.iter().chain(&end.rest).find(|l| {
        l.trim_start_matches("err: ")
            .starts_with("[primary] forged line")
    });
    check(forged_line.is_none(), || {
        format!("a line of the primary's output is the worker's: {forged_line:?}")
    })?;
    let esc =
        srv.seen.iter().chain(&end.rest).any(|l| l.contains('\x1b')) || end.stderr.contains('\x1b');
    check(!esc, || {
        format!(
            "an ESC byte reached the primary's output: {:?} / {:?}",
            srv.seen, end.stderr
        )
    })?;
    clean_end(&srv, &end)
}
