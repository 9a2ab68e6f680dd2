//! Which uid a new worker runs as, with [`User::per_worker_uids`](crate::User::per_worker_uids):
//! one uid per worker, so that no worker can signal or `ptrace` another (the kernel
//! lets a process signal only processes of its own uid, unless it has `CAP_KILL`).
//!
//! The rule: the lowest uid of the range that no worker the primary tracks runs as
//! (alive or not yet reaped); failing that, the lowest that only workers on their way
//! out run as (disconnecting after a scale-down, or the previous program's during a
//! binary upgrade); never one a live worker runs as. A reload or a recycle forks the
//! replacement while the worker it replaces still serves, so the range holds one uid
//! more than the workers (checked at start and when the count grows): there is always
//! a uid no live worker has. Sharing with the worker being replaced would let a
//! compromised one stop its replacement (`SIGSTOP`), make the reload fail, and stay.

use crate::settings::User;

/// The most workers `user`'s range carries: one uid fewer than it holds (the spare is
/// for a replacement). `None` without a range.
pub(super) fn max_workers(user: Option<&User>) -> Option<usize> {
    let user = user?;
    user.uid_range()?;
    Some(usize::try_from(user.uid_count() - 1).unwrap_or(usize::MAX))
}

/// `Err` with the message for `n` workers when `user`'s range cannot carry them.
pub(super) fn check_count(n: usize, user: Option<&User>) -> Result<(), String> {
    match (max_workers(user), user) {
        (Some(max), Some(u)) if n > max => Err(format!(
            "{n} workers asked for; workers run as {}, which carries at most {max}: one \
             uid per worker and one for the replacement a reload or a recycle forks \
             before the worker it replaces is gone (User::per_worker_uids)",
            u.describe()
        )),
        _ => Ok(()),
    }
}

/// `Err` when the primary's own uid (real, effective or saved) is in `user`'s range: a
/// worker would run as the primary and could signal it.
pub(super) fn check_primary_outside(user: &User) -> Result<(), String> {
    let Some((first, last)) = user.uid_range() else {
        return Ok(());
    };
    let mine = crate::sys::caps::user_ids().map_err(|e| format!("getresuid: {e}"))?;
    match mine.iter().find(|uid| (first..=last).contains(*uid)) {
        Some(uid) => Err(format!(
            "workers run as {}, which holds the primary's own uid {uid}: a worker could \
             signal the primary",
            user.describe()
        )),
        None => Ok(()),
    }
}

/// The lowest uid of `first..=last` that no worker in `held` runs as; else the lowest
/// that only leaving workers run as. `held`: each tracked worker's uid, and whether it
/// is leaving. The work is bounded by the number of workers, not by the range.
pub(super) fn pick(first: u32, last: u32, held: impl Iterator<Item = (u32, bool)>) -> Option<u32> {
    let mut any: Vec<u32> = Vec::new();
    let mut live: Vec<u32> = Vec::new();
    for (uid, leaving) in held {
        if (first..=last).contains(&uid) {
            any.push(uid);
            if !leaving {
                live.push(uid);
            }
        }
    }
    lowest_not_in(first, last, any).or_else(|| lowest_not_in(first, last, live))
}

/// The lowest uid of `first..=last` not in `taken`.
fn lowest_not_in(first: u32, last: u32, mut taken: Vec<u32>) -> Option<u32> {
    taken.sort_unstable();
    taken.dedup();
    let mut want = first;
    for uid in taken {
        if uid > want {
            break;
        }
        if uid == want {
            if want == last {
                return None;
            }
            want += 1;
        }
    }
    Some(want)
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn the_lowest_free_uid() {
        assert_eq!(pick(100, 104, [].into_iter()), Some(100));
        let held = [(100, false), (102, false), (101, false)];
        assert_eq!(pick(100, 104, held.into_iter()), Some(103));
        // A crashed worker's uid is free again once it is reaped (no longer held).
        let held = [(100, false), (102, false)];
        assert_eq!(pick(100, 104, held.into_iter()), Some(101));
        // Uids outside the range (a previous program's other user) do not count.
        let held = [(7, false), (65534, false)];
        assert_eq!(pick(100, 101, held.into_iter()), Some(100));
    }

    /// A reload's replacement is forked while the worker it replaces is alive: with
    /// the range one larger than the workers, it gets the spare uid, not the old one's.
    #[test]
    fn a_replacement_never_shares_with_the_worker_it_replaces() {
        let held = [(100, false), (101, false), (102, false)];
        assert_eq!(pick(100, 103, held.into_iter()), Some(103));
        // The old one gone, the next replacement takes its uid.
        let held = [(101, false), (102, false), (103, false)];
        assert_eq!(pick(100, 103, held.into_iter()), Some(100));
    }

    #[test]
    fn shares_only_with_a_leaving_worker_and_never_with_a_live_one() {
        // Every uid taken; 101's worker is disconnecting after a scale-down.
        let held = [(100, false), (101, true), (102, false)];
        assert_eq!(pick(100, 102, held.into_iter()), Some(101));
        let held = [(100, false), (101, false), (102, false)];
        assert_eq!(pick(100, 102, held.into_iter()), None);
        // The largest uid there is, at the end of the range: no overflow.
        let top = u32::MAX - 1;
        assert_eq!(
            pick(top - 1, top, [(top - 1, false)].into_iter()),
            Some(top)
        );
        assert_eq!(
            pick(top - 1, top, [(top - 1, false), (top, false)].into_iter()),
            None
        );
    }
}
