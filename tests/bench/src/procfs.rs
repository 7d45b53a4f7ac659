//! What `/proc` says about the `spin up` process tree: `spin up` starts one process per
//! trigger type (`spin trigger http`, and `spin trigger-cron`, which runs the cron
//! plugin's own `trigger-cron` binary), so the work of a tick is spread over several
//! processes, and CPU time has to be summed over all of them.

use std::time::Duration;

/// The fields of `/proc/<pid>/stat` after the command name, which may itself hold
/// spaces and parentheses: index 0 is field 3 (state), 1 the parent pid.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `root` and every process descended from it, found through the parent pids.
pub fn tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
        .collect();
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        next += 1;
    }
    found
}

/// User plus system CPU time of these processes (all their threads, living or ended).
pub fn cpu_time(pids: &[u32]) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| stat_fields(*pid))
        // utime and stime are fields 14 and 15.
        .map(|f| {
            [11, 12]
                .iter()
                .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / ticks_per_second)
}

/// The first process among `pids` whose command name is `name`.
pub fn find(pids: &[u32], name: &str) -> Option<u32> {
    pids.iter().copied().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name)
    })
}

/// A process's peak resident set (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
