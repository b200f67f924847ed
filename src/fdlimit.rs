//! The open-file limit and the connections it can hold. Every connection is a file
//! descriptor, and `--max-connections` (10,000 per listener by default) was never
//! compared with the limit: under `ulimit -n 256`, 300 idle API connections took every
//! descriptor, `accept` failed on both listeners, and `/livez` stopped answering.
//!
//! At start-up the soft limit is raised to the hard one (what a process may do for
//! itself). Then the descriptors open already and a reserve for what comes and goes
//! are kept out, and both listeners' `--max-connections` must fit in the rest; if they
//! do not, the admin listener keeps a small share (probes and scrapes need few
//! connections) and the API listener is lowered to what is left, with a warning that
//! gives the numbers. A limit too low for even that refuses to start. With the budgets
//! inside the limit a flood of the API listener can no longer take the descriptors the
//! admin listener's probes need.

use std::io;

/// Descriptors kept out of the connection budgets, on top of those open at start-up:
/// what a running kvserve opens and closes (the data file and its `.sha256` during a
/// load, and for as long as `--storage mmap` maps it; the watcher's inotify;
/// certificate re-reads; `/proc` reads of the process metrics; the trace exporter's
/// connection) and the connection a full listener accepts only to close it.
pub const RESERVE: u64 = 64;

/// The fewest connections a listener is lowered to; below it kvserve refuses to start.
pub const MIN_CONNECTIONS: usize = 8;

/// The connection budgets of the two listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub api: usize,
    pub admin: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("the open-file limit (ulimit -n) is {soft}: after the {reserved} descriptors kept for the process itself, its files and a reserve, {available} are left for connections, and kvserve needs at least {need} ({MIN_CONNECTIONS} per listener); raise the limit (ulimit -n, systemd LimitNOFILE, the container's nofile ulimit)")]
    TooLow {
        soft: u64,
        reserved: u64,
        available: u64,
        need: usize,
    },
}

/// Raises the soft open-file limit as far as allowed and returns the connection
/// budgets it leaves for `--max-connections` on each listener (see the module docs).
pub fn budget(max_connections: usize) -> Result<Budget, FdLimitError> {
    let soft = match raise_soft_limit() {
        Ok(soft) => soft,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read or raise the open-file limit; --max-connections is not checked against it");
            return Ok(Budget {
                api: max_connections,
                admin: max_connections,
            });
        }
    };
    let reserved = open_descriptors().saturating_add(RESERVE);
    let available = soft.saturating_sub(reserved);
    let budget = plan(max_connections, available).ok_or(FdLimitError::TooLow {
        soft,
        reserved,
        available,
        need: 2 * MIN_CONNECTIONS,
    })?;
    if budget.api < max_connections || budget.admin < max_connections {
        tracing::warn!(
            open_file_limit = soft,
            reserved,
            max_connections,
            api = budget.api,
            admin = budget.admin,
            "the open-file limit cannot hold --max-connections on both listeners: lowered to fit (raise ulimit -n / LimitNOFILE to keep --max-connections)"
        );
    }
    Ok(budget)
}

/// How `available` descriptors are shared: both listeners get `max` if that fits;
/// otherwise the admin listener keeps an eighth (at least `MIN_CONNECTIONS`, at most
/// `max`) and the API listener what is left, up to `max`. `None` when there is not
/// room for `MIN_CONNECTIONS` on each (or for `max` on each, if that is fewer).
pub fn plan(max: usize, available: u64) -> Option<Budget> {
    let available = usize::try_from(available).unwrap_or(usize::MAX);
    if max.saturating_mul(2) <= available {
        return Some(Budget {
            api: max,
            admin: max,
        });
    }
    let floor = MIN_CONNECTIONS.min(max);
    let admin = (available / 8).clamp(floor, max.max(floor));
    let api = available.saturating_sub(admin).min(max);
    (api >= floor).then_some(Budget { api, admin })
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one and returns the soft limit now in
/// force. An unlimited hard limit is taken as the kernel's `fs.nr_open`, the most a
/// process may have.
fn raise_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = if limit.rlim_max == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(limit.rlim_cur)
    } else {
        limit.rlim_max
    };
    if hard <= limit.rlim_cur {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: hard,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let err = io::Error::last_os_error();
        tracing::warn!(error = %err, from = limit.rlim_cur, to = hard, "cannot raise the open-file limit");
        return Ok(limit.rlim_cur);
    }
    tracing::info!(
        from = limit.rlim_cur,
        to = hard,
        "raised the open-file limit to the hard limit"
    );
    Ok(hard)
}

/// Descriptors open now (stdio, the listeners, the runtime's, the log's); a generous
/// guess where `/proc` cannot say.
fn open_descriptors() -> u64 {
    match std::fs::read_dir("/proc/self/fd") {
        // Less the one the listing itself holds.
        Ok(entries) => (entries.count() as u64).saturating_sub(1),
        Err(_) => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_listeners_keep_max_when_it_fits() {
        assert_eq!(
            plan(100, 200),
            Some(Budget {
                api: 100,
                admin: 100
            })
        );
        assert_eq!(
            plan(100, 1_000_000),
            Some(Budget {
                api: 100,
                admin: 100
            })
        );
    }

    #[test]
    fn the_api_listener_gives_way_and_the_admin_keeps_a_share() {
        // ulimit -n 256 less about 80 kept: the case.
        let budget = plan(10_000, 176).unwrap();
        assert_eq!(
            budget,
            Budget {
                api: 154,
                admin: 22
            }
        );
        assert!(budget.api + budget.admin <= 176);
        // A small share still leaves probes their floor.
        assert_eq!(plan(10_000, 40), Some(Budget { api: 32, admin: 8 }));
        // Never more than asked for.
        let budget = plan(100, 150).unwrap();
        assert!(budget.api <= 100 && budget.admin <= 100 && budget.api + budget.admin <= 150);
    }

    #[test]
    fn too_few_descriptors_refuse() {
        assert_eq!(plan(10_000, 15), None);
        assert_eq!(plan(10_000, 0), None);
        // A small --max-connections is its own floor.
        assert_eq!(plan(2, 3), None);
        assert_eq!(plan(2, 4), Some(Budget { api: 2, admin: 2 }));
    }
}
