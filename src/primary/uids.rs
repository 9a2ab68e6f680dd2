//! Which uid a new worker runs as, with [`User::per_worker_uids`](crate::User::per_worker_uids):
//! one uid per worker, so that no worker can signal or `ptrace` another (the kernel
//! lets a process signal only processes of its own uid, unless it has `CAP_KILL`).
//!
//! The rule: the lowest uid of the range that no worker the primary tracks runs as,
//! alive or not yet reaped, *leaving ones included*: a worker asked to go still runs
//! its code until it exits (a reload's or a recycle's old worker while its replacement
//! starts; every previous-program worker during a binary upgrade, until all the new
//! program's workers listen), and sharing its uid would let a compromised one stop its
//! successor (`SIGSTOP`), make the reload or the upgrade fail, and stay. So the range
//! holds twice the workers (checked at start and when the count grows): an upgrade's
//! new workers and the previous program's all run at once. When no uid is free (workers
//! scaled down and up again while the old ones still drain), the fork waits for a reap,
//! with the respawn back-off, rather than share.

use crate::settings::User;

/// The most workers `user`'s range carries: half the uids it holds (the other half for
/// the successors that run beside them, see the module docs). `None` without a range.
pub(super) fn max_workers(user: Option<&User>) -> Option<usize> {
    let user = user?;
    user.uid_range()?;
    Some(usize::try_from(user.uid_count() / 2).unwrap_or(usize::MAX))
}

/// `Err` with the message for `n` workers when `user`'s range cannot carry them.
pub(super) fn check_count(n: usize, user: Option<&User>) -> Result<(), String> {
    match (max_workers(user), user) {
        (Some(max), Some(u)) if n > max => Err(format!(
            "{n} workers asked for; workers run as {}, which carries at most {max}: one \
             uid per worker and one for each successor that runs beside it (a reload's, \
             a recycle's, a binary upgrade's) before it is gone (User::per_worker_uids)",
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

/// The lowest uid of `first..=last` that no worker in `held` (each tracked worker's
/// uid, leaving or not) runs as; `None` when every one is taken. The work is bounded by
/// the number of workers, not by the range.
pub(super) fn pick(first: u32, last: u32, held: impl Iterator<Item = u32>) -> Option<u32> {
    lowest_not_in(
        first,
        last,
        held.filter(|uid| (first..=last).contains(uid)).collect(),
    )
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
        assert_eq!(pick(100, 104, [100, 102, 101].into_iter()), Some(103));
        // A crashed worker's uid is free again once it is reaped (no longer held).
        assert_eq!(pick(100, 104, [100, 102].into_iter()), Some(101));
        // Uids outside the range (a previous program's other user) do not count.
        assert_eq!(pick(100, 101, [7, 65534].into_iter()), Some(100));
    }

    /// A successor is forked while the worker it replaces still runs (a reload, a
    /// recycle, a binary upgrade): it never gets that worker's uid, leaving or not.
    #[test]
    fn a_successor_never_shares_with_a_worker_that_still_runs() {
        // Three workers of a binary upgrade's previous program, all leaving, in a
        // range of six: the new program's three get the other three.
        let mut held = vec![100, 101, 102];
        for want in [103, 104, 105] {
            assert_eq!(pick(100, 105, held.iter().copied()), Some(want));
            held.push(want);
        }
        assert_eq!(pick(100, 105, held.iter().copied()), None);
        // One of the old ones reaped: its uid is free again.
        held.retain(|&u| u != 101);
        assert_eq!(pick(100, 105, held.iter().copied()), Some(101));
    }

    #[test]
    fn the_end_of_the_range_does_not_overflow() {
        let top = u32::MAX - 1;
        assert_eq!(pick(top - 1, top, [top - 1].into_iter()), Some(top));
        assert_eq!(pick(top - 1, top, [top - 1, top].into_iter()), None);
    }
}
