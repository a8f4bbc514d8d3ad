//! Start-up checks: which CPUs the shards run on, and whether io_uring may pin the memory its
//! buffer rings need. Each check is a pure decision (unit-tested) fed by a thin reader of
//! `/sys`, `/proc` or `getrlimit`, so that a misconfiguration stops the engine with a message
//! that says what to change instead of failing later inside a shard.

use std::fs;
use std::io;

use engine_api::config::{MAX_SHARDS, Shards, format_cpulist, parse_cpulist};

/// Where Linux lists the online CPUs, as a cpulist (`0-3,6`).
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";
/// `CAP_IPC_LOCK`'s bit in the capability sets of `/proc/self/status`.
const CAP_IPC_LOCK: u32 = 14;

/// The online CPUs, sorted.
pub(crate) fn online_cpus() -> io::Result<Vec<usize>> {
    let text = fs::read_to_string(ONLINE_CPUS)?;
    parse_cpulist(&text)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("{ONLINE_CPUS}: {err}")))
}

/// How many shards run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardPlan {
    /// One entry per shard: the CPU to pin it to, `None` to leave it unpinned.
    pub(crate) cpus: Vec<Option<usize>>,
    /// Things worth a `warn!` that do not stop the engine.
    pub(crate) warnings: Vec<String>,
}

/// Decides the shard count and each shard's CPU from `shards:`, `cpus:` and the online CPUs.
///
/// The usable CPUs are `cpus` if set (all of which must be online), else every online CPU.
/// `Shards::Auto` runs one shard per usable CPU (at most [`MAX_SHARDS`]); `Shards::Count(n)`
/// pins shard `i` to usable CPU `i % len`, with a warning when shards must share CPUs.
///
/// An empty `online` means the online CPUs are unknown (`/sys` unreadable): the listed `cpus` are
/// then trusted as they are, and without them nothing is pinned and `auto` runs one shard.
pub(crate) fn plan_shards(
    shards: Shards,
    cpus: Option<&[usize]>,
    online: &[usize],
) -> Result<ShardPlan, String> {
    let mut warnings = Vec::new();
    if let Some(cpus) = cpus
        && !online.is_empty()
    {
        let offline: Vec<usize> = cpus
            .iter()
            .copied()
            .filter(|cpu| !online.contains(cpu))
            .collect();
        match offline.as_slice() {
            [] => {}
            [cpu] => {
                return Err(format!(
                    "cpus: CPU {cpu} is not online (online: {})",
                    format_cpulist(online)
                ));
            }
            _ => {
                return Err(format!(
                    "cpus: CPUs {} are not online (online: {})",
                    format_cpulist(&offline),
                    format_cpulist(online)
                ));
            }
        }
    }
    let usable = cpus.unwrap_or(online);
    if usable.is_empty() {
        warnings.push(format!(
            "cannot tell which CPUs are online ({ONLINE_CPUS} unreadable); shards are not pinned"
        ));
        let count = match shards {
            Shards::Auto => 1,
            Shards::Count(count) => count.get(),
        };
        return Ok(ShardPlan {
            cpus: vec![None; count],
            warnings,
        });
    }
    let source = match cpus {
        Some(_) => "listed in cpus",
        None => "online",
    };
    let count = match shards {
        Shards::Auto => {
            if usable.len() > MAX_SHARDS {
                warnings.push(format!(
                    "shards: auto runs at most {MAX_SHARDS} shards, so CPUs {} ({source}) run \
                     none",
                    format_cpulist(usable.get(MAX_SHARDS..).unwrap_or_default())
                ));
            }
            usable.len().min(MAX_SHARDS)
        }
        Shards::Count(count) => {
            let count = count.get();
            if count > usable.len() {
                let (verb, noun) = match usable.len() {
                    1 => ("is", "CPU"),
                    _ => ("are", "CPUs"),
                };
                warnings.push(format!(
                    "shards: {count} but only {} {noun} {verb} {source} ({}); shards will share \
                     cores and run slower",
                    usable.len(),
                    format_cpulist(usable)
                ));
            }
            count
        }
    };
    let cpus = (0..count)
        .map(|shard| usable.get(shard % usable.len()).copied())
        .collect();
    Ok(ShardPlan { cpus, warnings })
}

// Why io_uring needs RLIMIT_MEMLOCK (read in the kernel sources, io_uring/{io_uring,memmap,
// rsrc}.c): `io_uring_create` records the user for accounting unless the process has
// CAP_IPC_LOCK in the initial user namespace (`ns_capable_noaudit(&init_user_ns, ...)`; plain
// `capable()` before 6.6). Since the memory-region rework (6.13/6.14) a provided-buffer ring,
// whether its pages come from us (our mmap, as `ring::BufRing` does) or from the kernel, is an
// `io_create_region`, which charges its pages with `__io_account_mem` to the user's `locked_vm`
// and fails with ENOMEM once that would pass RLIMIT_MEMLOCK (the soft limit, in pages). Older
// kernels pinned a user-provided buffer ring without charging it, so the check below is
// conservative there. Only the ring of buffer descriptors is pinned, not the buffers it points
// at. `locked_vm` is per user, not per process: other processes of the same user that pin
// io_uring memory count against the same limit, which the check cannot see.

/// Whether io_uring may pin `per_shard_bytes` of buffer rings in each of `shards` shards; the
/// error says how to fix it.
pub(crate) fn memlock_check(per_shard_bytes: u64, shards: usize) -> Result<(), String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        ));
    }
    let limit = (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
    // SAFETY: sysconf has no preconditions.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let exempt = fs::read_to_string("/proc/self/status")
        .ok()
        .is_some_and(|status| has_capability(&status, CAP_IPC_LOCK))
        && fs::read_to_string("/proc/self/uid_map")
            .map_or(true, |map| is_initial_user_namespace(&map));
    memlock_verdict(
        per_shard_bytes,
        shards,
        Memlock {
            limit,
            exempt,
            page_size,
        },
    )
}

/// What the kernel's io_uring accounting depends on.
#[derive(Debug, Clone, Copy)]
struct Memlock {
    /// RLIMIT_MEMLOCK's soft limit in bytes; `None`: unlimited.
    limit: Option<u64>,
    /// The process has CAP_IPC_LOCK in the initial user namespace: nothing is charged.
    exempt: bool,
    page_size: u64,
}

/// The decision of [`memlock_check`]: the kernel charges whole pages per ring, per shard.
fn memlock_verdict(per_shard_bytes: u64, shards: usize, memlock: Memlock) -> Result<(), String> {
    let Some(limit) = memlock.limit else {
        return Ok(());
    };
    if memlock.exempt || per_shard_bytes == 0 || shards == 0 {
        return Ok(());
    }
    let page = memlock.page_size.max(1);
    let per_shard = per_shard_bytes.div_ceil(page).saturating_mul(page);
    let total = per_shard.saturating_mul(shards as u64);
    if total <= limit / page * page {
        return Ok(());
    }
    let total_text = if shards > 1 {
        format!(" ({} KiB for {shards} shards)", total.div_ceil(1024))
    } else {
        String::new()
    };
    Err(format!(
        "RLIMIT_MEMLOCK is {} KiB but the io_uring buffer rings need {} KiB per shard{total_text}; \
         raise it (ulimit -l, systemd LimitMEMLOCK=) or set io.backend: epoll",
        limit / 1024,
        per_shard.div_ceil(1024),
    ))
}

/// Whether the effective capability set in `/proc/self/status` text has capability `bit`.
fn has_capability(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps.checked_shr(bit).is_some_and(|caps| caps & 1 == 1))
}

/// Whether `/proc/self/uid_map` text is the initial user namespace's identity map, where
/// capabilities count for io_uring's accounting.
fn is_initial_user_namespace(uid_map: &str) -> bool {
    let lines: Vec<Vec<&str>> = uid_map
        .lines()
        .map(|line| line.split_whitespace().collect())
        .filter(|fields: &Vec<&str>| !fields.is_empty())
        .collect();
    matches!(lines.as_slice(), [fields] if fields.as_slice() == ["0", "0", "4294967295"])
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn count(n: usize) -> Shards {
        Shards::Count(NonZeroUsize::new(n).unwrap())
    }

    #[test]
    fn auto_runs_one_shard_per_online_cpu() {
        let plan = plan_shards(Shards::Auto, None, &[0, 1, 2, 3]).unwrap();
        assert_eq!(plan.cpus, vec![Some(0), Some(1), Some(2), Some(3)]);
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn auto_runs_one_shard_per_listed_cpu() {
        let plan = plan_shards(Shards::Auto, Some(&[1, 3]), &[0, 1, 2, 3]).unwrap();
        assert_eq!(plan.cpus, vec![Some(1), Some(3)]);
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn auto_stops_at_the_shard_limit() {
        let online: Vec<usize> = (0..300).collect();
        let plan = plan_shards(Shards::Auto, None, &online).unwrap();
        assert_eq!(plan.cpus.len(), MAX_SHARDS);
        assert_eq!(plan.cpus.last(), Some(&Some(254)));
        assert_eq!(
            plan.warnings,
            vec!["shards: auto runs at most 255 shards, so CPUs 255-299 (online) run none"]
        );
    }

    #[test]
    fn counted_shards_wrap_around_the_cpus() {
        let plan = plan_shards(count(2), None, &[0, 1, 2, 3]).unwrap();
        assert_eq!(plan.cpus, vec![Some(0), Some(1)]);
        assert!(plan.warnings.is_empty());

        let plan = plan_shards(count(5), Some(&[2, 5, 7]), &[0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
        assert_eq!(plan.cpus, vec![Some(2), Some(5), Some(7), Some(2), Some(5)]);
        assert_eq!(
            plan.warnings,
            vec![
                "shards: 5 but only 3 CPUs are listed in cpus (2,5,7); shards will share cores \
                 and run slower"
            ]
        );
    }

    #[test]
    fn more_shards_than_cpus_is_a_warning() {
        let plan = plan_shards(count(4), None, &[0, 1]).unwrap();
        assert_eq!(plan.cpus, vec![Some(0), Some(1), Some(0), Some(1)]);
        assert_eq!(
            plan.warnings,
            vec![
                "shards: 4 but only 2 CPUs are online (0-1); shards will share cores and run \
                 slower"
            ]
        );
        let plan = plan_shards(count(2), None, &[3]).unwrap();
        assert_eq!(plan.cpus, vec![Some(3), Some(3)]);
        assert_eq!(
            plan.warnings,
            vec!["shards: 2 but only 1 CPU is online (3); shards will share cores and run slower"]
        );
    }

    #[test]
    fn offline_cpus_are_errors() {
        assert_eq!(
            plan_shards(Shards::Auto, Some(&[0, 5]), &[0, 1]),
            Err("cpus: CPU 5 is not online (online: 0-1)".to_owned())
        );
        assert_eq!(
            plan_shards(count(2), Some(&[1, 4, 5, 6, 9]), &[0, 1, 2, 3]),
            Err("cpus: CPUs 4-6,9 are not online (online: 0-3)".to_owned())
        );
    }

    #[test]
    fn unknown_online_cpus() {
        let plan = plan_shards(Shards::Auto, None, &[]).unwrap();
        assert_eq!(plan.cpus, vec![None]);
        assert_eq!(plan.warnings.len(), 1);
        let plan = plan_shards(count(3), None, &[]).unwrap();
        assert_eq!(plan.cpus, vec![None, None, None]);
        // Listed CPUs are trusted when nothing can be checked.
        let plan = plan_shards(count(3), Some(&[4, 6]), &[]).unwrap();
        assert_eq!(plan.cpus, vec![Some(4), Some(6), Some(4)]);
    }

    #[test]
    fn this_machine_has_online_cpus() {
        let online = online_cpus().unwrap();
        assert!(!online.is_empty());
        let plan = plan_shards(Shards::Auto, None, &online).unwrap();
        assert_eq!(plan.cpus.len(), online.len().min(MAX_SHARDS));
    }

    const PAGE: u64 = 4096;

    fn limited(limit: u64) -> Memlock {
        Memlock {
            limit: Some(limit),
            exempt: false,
            page_size: PAGE,
        }
    }

    #[test]
    fn memlock_within_the_limit() {
        assert_eq!(memlock_verdict(16 * 1024, 4, limited(64 * 1024)), Ok(()));
        // Whole pages are charged: 1 byte costs a page.
        assert_eq!(memlock_verdict(1, 16, limited(64 * 1024)), Ok(()));
        assert_eq!(memlock_verdict(0, 100, limited(0)), Ok(()));
    }

    #[test]
    fn memlock_over_the_limit() {
        assert_eq!(
            memlock_verdict(16 * 1024 + 1, 1, limited(16 * 1024)),
            Err(
                "RLIMIT_MEMLOCK is 16 KiB but the io_uring buffer rings need 20 KiB per shard; \
                 raise it (ulimit -l, systemd LimitMEMLOCK=) or set io.backend: epoll"
                    .to_owned()
            )
        );
        assert_eq!(
            memlock_verdict(32 * 1024, 4, limited(64 * 1024)),
            Err(
                "RLIMIT_MEMLOCK is 64 KiB but the io_uring buffer rings need 32 KiB per shard \
                 (128 KiB for 4 shards); raise it (ulimit -l, systemd LimitMEMLOCK=) or set \
                 io.backend: epoll"
                    .to_owned()
            )
        );
        // The kernel compares whole pages: a limit of 1.5 pages holds one.
        assert!(memlock_verdict(2 * PAGE, 1, limited(PAGE * 3 / 2)).is_err());
        assert!(memlock_verdict(u64::MAX, 255, limited(u64::MAX - 1)).is_err());
    }

    #[test]
    fn memlock_unlimited_or_exempt() {
        let unlimited = Memlock {
            limit: None,
            exempt: false,
            page_size: PAGE,
        };
        assert_eq!(memlock_verdict(1 << 40, 255, unlimited), Ok(()));
        let exempt = Memlock {
            exempt: true,
            ..limited(0)
        };
        assert_eq!(memlock_verdict(1 << 40, 255, exempt), Ok(()));
    }

    #[test]
    fn capabilities_from_proc_status() {
        let status = "Name:\tengine\nCapInh:\t0000000000000000\nCapPrm:\t0000000000004000\n\
                      CapEff:\t0000000000004000\nCapBnd:\t000001ffffffffff\n";
        assert!(has_capability(status, CAP_IPC_LOCK));
        assert!(!has_capability(status, 13));
        let without = status.replace("CapEff:\t0000000000004000", "CapEff:\t000001ffffffbfff");
        assert!(!has_capability(&without, CAP_IPC_LOCK));
        assert!(has_capability(&without, 13));
        assert!(!has_capability("CapEff:\tzz\n", CAP_IPC_LOCK));
        assert!(!has_capability("", CAP_IPC_LOCK));
        assert!(!has_capability("CapEff:\tffffffffffffffff\n", 64));
    }

    #[test]
    fn initial_user_namespace() {
        assert!(is_initial_user_namespace(
            "         0          0 4294967295\n"
        ));
        assert!(!is_initial_user_namespace(
            "         0       1000          1\n"
        ));
        assert!(!is_initial_user_namespace("0 0 4294967295\n1 1 1\n"));
        assert!(!is_initial_user_namespace(""));
    }

    #[test]
    fn memlock_check_reads_this_process() {
        // A petabyte passes only unlimited or exempt; otherwise the error is the limit's.
        match memlock_check(1 << 50, 1) {
            Ok(()) => {}
            Err(err) => assert!(
                err.starts_with("RLIMIT_MEMLOCK is ")
                    && err.contains("need 1099511627776 KiB per shard"),
                "{err}"
            ),
        }
    }
}
