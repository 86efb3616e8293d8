//! `/proc`: the machine, memory, and CPU time per thread group, and waiting for a quiet machine.
//! Shared by both harnesses (`polybook-e2e-bench`, `polybook-replay-bench`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// CPUs this process may use.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// CPUs in `/proc/stat` (the machine's, whatever this thread's affinity): the denominator of
/// the machine-wide busy time there.
pub fn machine_cpus() -> usize {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let n = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    if n == 0 {
        cpus()
    } else {
        n
    }
}

/// Each CPU's busy time so far (user, nice, system, irq, softirq, steal) in ns, from
/// `/proc/stat`: with a thread group's CPU, tells whether others ran on a pinned thread's CPU.
pub fn busy_per_cpu() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let ticks: u64 = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
            ticks * (1_000_000_000 / USER_HZ)
        })
        .collect()
}

/// Clock ticks per second of /proc's utime/stime (USER_HZ, 100 on Linux).
pub const USER_HZ: u64 = 100;

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": machine_cpus(),
        "cpu_model": model,
        "mem_total_mib": mem_kib / 1024,
        "kernel": kernel.trim(),
    })
}

/// A `VmRSS`-style line of /proc/self/status, in bytes.
pub fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

pub fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// utime + stime (ticks) from a /proc stat line (the name in parentheses may hold spaces).
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Which part of the process a thread belongs to, by its name.
pub fn thread_group(comm: &str) -> String {
    let comm = comm.trim();
    if let Some(rest) = comm.strip_prefix("data-") {
        // glommio names executor threads "{name}-{executor id}": "data-1-3" is shard 1.
        let shard = rest.split('-').next().unwrap_or(rest);
        return format!("engine_data_{shard}");
    }
    let g = if comm.starts_with("control") {
        "engine_control"
    } else if comm.starts_with("discovery") || comm.starts_with("gamma-lookup") {
        "engine_discovery"
    } else if comm.starts_with("sim-server") {
        "sim"
    } else if comm.starts_with("wire-client") {
        "wire_client"
    } else if comm.starts_with("replay-") {
        "generator"
    } else if comm.starts_with("polybook-nats") {
        "engine_nats_publisher"
    } else if comm.starts_with("nats-consumer") {
        "nats_consumer"
    } else {
        "harness_other"
    };
    g.to_owned()
}

/// CPU time so far, in ns, by thread group; `process` includes threads that have exited.
pub fn cpu_snapshot() -> BTreeMap<String, u64> {
    let tick_ns = 1_000_000_000 / USER_HZ;
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let Some(t) = std::fs::read_to_string(p.join("stat")).ok().and_then(|s| stat_ticks(&s))
            else {
                continue;
            };
            *out.entry(thread_group(&comm)).or_insert(0) += t * tick_ns;
        }
    }
    let process =
        std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_ticks(&s)).unwrap_or(0);
    out.insert("process".into(), process * tick_ns);
    // Every CPU's busy time (user, nice, system, irq, softirq, steal), to tell what other
    // processes on the machine took during a measurement.
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
            let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some([0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<u64>())
        })
        .unwrap_or(0);
    out.insert("machine_busy".into(), busy * tick_ns);
    out
}

/// [`cpu_snapshot`] with each thread's time from `/proc/self/task/*/schedstat` (the
/// scheduler's run time in ns) instead of 10 ms ticks, where the kernel has it; `process` and
/// `machine_busy` stay in ticks. For short windows at low load, where ticks are too coarse.
pub fn cpu_snapshot_precise() -> BTreeMap<String, u64> {
    let mut out = cpu_snapshot();
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let Some(ns) = ns else { return out };
        *groups.entry(thread_group(&comm)).or_insert(0) += ns;
    }
    out.extend(groups);
    out
}

/// CPU used between two snapshots by group, plus `other_processes` (the machine's busy time
/// not spent by this process).
pub fn cpu_delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut d: BTreeMap<String, u64> =
        b.iter().map(|(k, v)| (k.clone(), v.saturating_sub(*a.get(k).unwrap_or(&0)))).collect();
    let busy = d.remove("machine_busy").unwrap_or(0);
    let own = d.get("process").copied().unwrap_or(0);
    d.insert("other_processes".into(), busy.saturating_sub(own));
    d
}

pub fn cpu_ms_json(d: &BTreeMap<String, u64>) -> Value {
    Value::Object(d.iter().map(|(k, v)| (k.clone(), json!(v / 1_000_000))).collect())
}

/// Waits (at most `max`) until other processes use under 10 % of the machine over half a
/// second, so a measurement starts on a quiet machine when it can; returns their last share.
pub fn wait_quiet(max: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let a = cpu_snapshot();
        std::thread::sleep(Duration::from_millis(500));
        let d = cpu_delta(&a, &cpu_snapshot());
        let share = d.get("other_processes").copied().unwrap_or(0) as f64
            / 1e9
            / (0.5 * machine_cpus() as f64);
        if share < 0.10 || start.elapsed() >= max {
            return share;
        }
    }
}

pub fn other_share(d: &BTreeMap<String, u64>, secs: f64) -> f64 {
    d.get("other_processes").copied().unwrap_or(0) as f64 / 1e9 / (secs * machine_cpus() as f64)
}

/// Warns when other processes took more than 10 % of the machine during a measurement.
pub fn warn_foreign(d: &BTreeMap<String, u64>, secs: f64) {
    let share = other_share(d, secs);
    if share > 0.10 {
        println!(
            "  warning: other processes used {:.0}% of the machine during this measurement",
            share * 100.0
        );
    }
}

pub fn engine_cpu(d: &BTreeMap<String, u64>) -> u64 {
    d.iter().filter(|(k, _)| k.starts_with("engine_")).map(|(_, v)| *v).sum()
}
