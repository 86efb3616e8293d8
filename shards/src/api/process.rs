//! The standard `process_*` metrics (the names every Prometheus client library exports, so
//! stock dashboards and alerts work): CPU time, resident memory, start time and descriptors,
//! read from the kernel on each scrape. Linux only, like the engine.

/// One reading; a field the kernel did not give is `None` and its family is left out.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Linux's USER_HZ, the unit of /proc's tick counts: 100 on every architecture the kernel
/// builds for user space (sysconf(_SC_CLK_TCK) answers it too).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    pub fn read() -> ProcessStats {
        ProcessStats {
            cpu_seconds: cpu_seconds(),
            resident_memory_bytes: rss_bytes(),
            start_time_seconds: start_time_seconds(),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft),
        }
    }
}

/// User + system CPU time of every thread of the process.
fn cpu_seconds() -> Option<f64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?;
    Some(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// VmRSS from /proc/self/status.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Unix time the process started: boot time (`btime` in /proc/stat) plus the start tick in
/// /proc/self/stat.
fn start_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    start_time_from(&stat, &boot)
}

fn start_time_from(self_stat: &str, proc_stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may contain spaces: the
    // start time is field 22 of the whole line, the 20th after the name.
    let rest = self_stat.rsplit_once(')')?.1;
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 =
        proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(btime as f64 + ticks as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_boot_time_plus_the_start_tick() {
        // A real line's shape, with a name that has a space and a parenthesis in it.
        let stat = "4242 (poly book)) S 1 4242 4242 0 -1 4194560 500 0 0 0 12 3 0 0 20 0 5 0 \
                    123450 1000000 200 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(start_time_from(stat, boot), Some(1_700_000_000.0 + 1234.5));
        assert_eq!(start_time_from("4242 (x) S 1", boot), None);
        assert_eq!(start_time_from(stat, "cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_on_linux() {
        let p = ProcessStats::read();
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0));
        assert!(p.resident_memory_bytes.is_some_and(|b| b > 0));
        assert!(p.open_fds.is_some_and(|n| n >= 3));
        assert!(p.max_fds.is_some_and(|n| n > 0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let start = p.start_time_seconds.unwrap_or(0.0);
        assert!(start > 1e9 && start <= now + 1.0, "start {start}, now {now}");
    }
}
