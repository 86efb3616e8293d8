//! Command-line modes and arguments: `--quick`, `--full`, `--only`, `--soak` and the knobs.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::RATE_MAX;

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) mode: &'static str,
    pub(crate) phases: Vec<String>,
    /// Market counts for the wire baseline and the engine steps.
    pub(crate) markets: Vec<usize>,
    pub(crate) rates: Vec<f64>,
    pub(crate) shards: Vec<usize>,
    pub(crate) window: Duration,
    /// Longest wait for a quiet machine before each measurement.
    pub(crate) quiet_wait: Duration,
    /// Books compared with the truth per engine step (all when there are fewer).
    pub(crate) verify_max: usize,
    pub(crate) scale_markets: usize,
    pub(crate) scale_verify: usize,
    /// `--sim-cpu`: where the simulator runs in engine steps (Some(None): unpinned); None keeps
    /// the default placement.
    pub(crate) sim_cpu: Option<Option<usize>>,
    /// WebSocket read buffer of the plain wire client (None: tungstenite's 128 KiB default).
    pub(crate) client_read_buffer: Option<usize>,
    /// `--soak MINUTES`: run only the soak (steady rate, random faults) for this long.
    pub(crate) soak_minutes: Option<f64>,
    /// Market counts of the api-health phase.
    pub(crate) api_markets: Vec<usize>,
    pub(crate) out: String,
}

impl Plan {
    pub(crate) fn quick() -> Plan {
        Plan {
            mode: "quick",
            phases: vec!["wire".into(), "engine".into(), "scale".into()],
            markets: vec![2_000],
            rates: vec![2_000.0, 10_000.0, 50_000.0],
            shards: vec![1, 2],
            window: Duration::from_secs(5),
            quiet_wait: Duration::from_secs(5),
            verify_max: usize::MAX,
            scale_markets: 10_000,
            scale_verify: 2_000,
            sim_cpu: None,
            client_read_buffer: None,
            soak_minutes: None,
            api_markets: vec![2_000, 5_000],
            out: default_out(),
        }
    }

    pub(crate) fn full() -> Plan {
        Plan {
            mode: "full",
            phases: vec![
                "wire".into(),
                "engine".into(),
                "scale".into(),
                "api".into(),
                "api-health".into(),
            ],
            markets: vec![10_000, 50_000],
            rates: vec![10_000.0, 50_000.0, 80_000.0, RATE_MAX],
            shards: vec![1, 2],
            window: Duration::from_secs(8),
            quiet_wait: Duration::from_secs(10),
            verify_max: 4_000,
            scale_markets: 50_000,
            scale_verify: 5_000,
            sim_cpu: None,
            client_read_buffer: None,
            soak_minutes: None,
            api_markets: vec![2_000, 5_000],
            out: default_out(),
        }
    }
}

pub(crate) fn default_out() -> String {
    format!("{}/../target/bench-e2e.json", env!("CARGO_MANIFEST_DIR"))
}

pub(crate) const USAGE: &str =
    "usage: polybook-e2e-bench [--quick|--full] [--only wire,engine,scale,api,api-health] [--soak MINUTES] \
[--markets N,N] [--rates R,R|max] [--shards 1,2] [--window SECS] [--quiet-wait SECS] [--verify N] \
[--scale-markets N] [--api-markets N,N] [--sim-cpu N|none] [--client-read-buffer-kib N] [--out FILE]";

pub(crate) fn list<T: std::str::FromStr>(v: &str, what: &str) -> Result<Vec<T>> {
    v.split(',')
        .map(|x| x.trim().parse::<T>().map_err(|_| anyhow!("{what}: cannot parse {x:?}")))
        .collect()
}

pub(crate) fn parse_args() -> Result<Plan> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan = if args.iter().any(|a| a == "--full") { Plan::full() } else { Plan::quick() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--quick" | "--full" => {}
            "--only" => plan.phases = val()?.split(',').map(str::to_owned).collect(),
            "--markets" => plan.markets = list(&val()?, "--markets")?,
            "--rates" => {
                plan.rates = val()?
                    .split(',')
                    .map(|r| {
                        if r == "max" {
                            Ok(RATE_MAX)
                        } else {
                            r.parse::<f64>().map_err(|_| anyhow!("--rates: cannot parse {r:?}"))
                        }
                    })
                    .collect::<Result<_>>()?
            }
            "--shards" => plan.shards = list(&val()?, "--shards")?,
            "--window" => {
                plan.window = Duration::from_secs_f64(list::<f64>(&val()?, "--window")?[0])
            }
            "--quiet-wait" => {
                plan.quiet_wait = Duration::from_secs_f64(list::<f64>(&val()?, "--quiet-wait")?[0])
            }
            "--verify" => plan.verify_max = list(&val()?, "--verify")?[0],
            "--scale-markets" => plan.scale_markets = list(&val()?, "--scale-markets")?[0],
            "--api-markets" => plan.api_markets = list(&val()?, "--api-markets")?,
            "--out" => plan.out = val()?,
            "--soak" => {
                let m = list::<f64>(&val()?, "--soak")?[0];
                if m.is_nan() || m <= 0.0 {
                    bail!("--soak: minutes must be > 0");
                }
                plan.soak_minutes = Some(m);
                plan.mode = "soak";
            }
            "--sim-cpu" => {
                let v = val()?;
                plan.sim_cpu =
                    Some(if v == "none" { None } else { Some(list::<usize>(&v, "--sim-cpu")?[0]) })
            }
            "--client-read-buffer-kib" => {
                plan.client_read_buffer =
                    Some(list::<usize>(&val()?, "--client-read-buffer-kib")?[0] << 10)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    for p in &plan.phases {
        if !["wire", "engine", "scale", "api", "api-health"].contains(&p.as_str()) {
            bail!("unknown phase {p:?}\n{USAGE}");
        }
    }
    if plan.shards.contains(&0) {
        bail!("--shards: at least one data shard");
    }
    Ok(plan)
}
