//! The `polybook` binary: parse the command line, set up logging, run the chosen command.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use polybook::book::TokenMeta;
use polybook::{Price, Size};
use polybook_shards::config::{Config, ConfigSource, Loaded};

/// Settings and exit codes, after every command's own help.
const AFTER_HELP: &str = "\
Settings, highest precedence first: command-line flags, then environment variables, then the \
config file, then the defaults. The file is --config FILE, else $POLYBOOK_CONFIG, else \
./config.toml if it exists; without one every key takes its default (and the log says so).

Environment overrides:
  POLYBOOK_CONFIG           the config file
  POLYBOOK_API_LISTEN       api.listen (run --api beats it)
  POLYBOOK_ADMIN_TOKEN      api.admin_token
  POLYBOOK_ALLOWED_ORIGINS  api.allowed_origins, comma-separated
  POLYBOOK_LOG_LEVEL        log.level (RUST_LOG beats it)
  POLYBOOK_LOG_JSON         log.json: true/false (--log-json beats it)
  POLYBOOK_CONTROL_CORE     layout.control_core
  POLYBOOK_DATA_CORES       layout.data_cores: auto, or CPUs such as 1,2,3
  POLYBOOK_IO_MEMORY_KIB    layout.io_memory_kib
  POLYBOOK_GAMMA_URL        endpoints.gamma_url
  POLYBOOK_WS_URL           endpoints.ws_url
  POLYBOOK_TLS_ROOTS_FILE   endpoints.tls_roots_file

Exit codes: 0 stopped cleanly; 1 runtime failure; 2 usage error; 69 io_uring unavailable \
(seccomp, kernel.io_uring_disabled, memlock); 70 an engine thread died; 78 bad configuration.";

#[derive(Parser, Debug)]
#[command(
    name = "polybook",
    version,
    about = "Live, exact Polymarket L2 books",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log JSON lines instead of the human format (also POLYBOOK_LOG_JSON, log.json).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Keep every active market's book live, against the endpoints in the config.
    #[command(after_help = AFTER_HELP)]
    Run {
        /// The configuration file (missing keys take their defaults) [default: ./config.toml
        /// if it exists, else every default].
        #[arg(long, env = "POLYBOOK_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the HTTP API listens (overrides POLYBOOK_API_LISTEN and api.listen).
        #[arg(long, value_name = "ADDR")]
        api: Option<String>,
        /// Record every raw frame per shard under this directory (replay with `replay DIR`).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Run the simulated exchange and the engine in one process, pointed at each other.
    #[command(after_help = AFTER_HELP)]
    Demo {
        /// The configuration file for the engine; endpoints are replaced by the simulator's.
        #[arg(long, env = "POLYBOOK_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        sim: SimArgs,
        /// Where the engine's HTTP API listens (overrides the config).
        #[arg(long)]
        api: Option<String>,
        /// Record every raw frame per shard under this directory (replay with `replay DIR`).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Run only the simulated Polymarket exchange (Gamma, CLOB REST, market WebSocket).
    Sim {
        #[command(flatten)]
        sim: SimArgs,
        /// Serve this recording instead of the model: Gamma lists its markets, the WebSocket
        /// plays its frames (`--listen` applies; the model's options do not).
        #[arg(long, value_name = "RECORDING")]
        replay: Option<PathBuf>,
        /// With --replay: 1 (as recorded), 10 (ten times faster), any whole number, or max.
        #[arg(long, default_value = "1", requires = "replay")]
        speed: polybook_shards::sim_server::replay_venue::Speed,
    },
    /// Validate the configuration `run` would use (file, then environment overrides) and
    /// print the resolved settings.
    #[command(after_help = AFTER_HELP)]
    CheckConfig {
        /// The configuration file [default: $POLYBOOK_CONFIG, else ./config.toml if it
        /// exists, else every default].
        #[arg(env = "POLYBOOK_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script, e.g. `polybook completions bash > \
    /// /etc/bash_completion.d/polybook`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `polybook man > polybook.1; man ./polybook.1`.
    Man,
    /// Apply a recorded capture (one frame per line, optional `recv_ns ` prefix) to fresh books.
    Replay {
        /// A capture file, or an engine recording (a `--record` directory or one of its files).
        file: PathBuf,
        /// Print `{"books": {...}, "stats": {...}}` as JSON to stdout.
        #[arg(long)]
        dump: bool,
        /// min_order_size assumed for the book hash (not on the stream; the venue's usual 5).
        #[arg(long, default_value = "5")]
        min_order_size: Size,
        /// neg_risk assumed for the book hash (not on the stream).
        #[arg(long, default_value_t = false)]
        neg_risk: bool,
        /// tick size assumed until a book or tick_size_change says otherwise.
        #[arg(long, default_value = "0.01")]
        tick_size: Price,
        /// Skip recomputing the venue's SHA-1 book hashes.
        #[arg(long)]
        no_verify_hash: bool,
        /// Engine recordings only: the books as of this receive time (`2026-12-02T01:30:00Z`
        /// or unix s/ms/ns); each shard stops at its first line received later.
        #[arg(long, value_parser = polybook_shards::replay::parse_time_ns)]
        at: Option<u64>,
    },
    /// Write a recording's top of book, trades, level changes or book snapshots as CSV or
    /// Parquet.
    Export(polybook_shards::export::ExportArgs),
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// Where the simulated exchange listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Seed of the simulated market.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Markets at start (two tokens each).
    #[arg(long, default_value_t = 1000)]
    markets: usize,
    /// Events generated per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Random faults per minute (drops, 1013 closes, silence, duplicates, malformed, 429s).
    #[arg(long, default_value_t = 0.0)]
    faults_per_minute: f64,
    /// Serve https and wss (on `localhost`) with a self-signed certificate made at start-up.
    #[arg(long)]
    tls: bool,
    /// Write that certificate as PEM to this file (for `endpoints.tls_roots_file`).
    #[arg(long, value_name = "FILE", requires = "tls")]
    cert_out: Option<PathBuf>,
    /// Plain traffic: no same-timestamp runs, hashes ahead, stale snapshots or other quirks of
    /// the real venue's stream.
    #[arg(long)]
    plain_traffic: bool,
}

impl SimArgs {
    fn config(&self) -> anyhow::Result<polybook_shards::sim_server::SimServerConfig> {
        use polybook::sim::RealShape;
        use polybook_shards::sim_server::{RandomFaults, SimServerConfig, TlsIdentity};
        let tls = if self.tls { Some(TlsIdentity::self_signed_localhost()?) } else { None };
        if let (Some(id), Some(path)) = (&tls, &self.cert_out) {
            write_cert(id, path)?;
        }
        Ok(SimServerConfig {
            listen: self.listen.clone(),
            seed: self.seed,
            markets: self.markets,
            rate: self.rate,
            random_faults: (self.faults_per_minute > 0.0)
                .then_some(RandomFaults { seed: self.seed, per_minute: self.faults_per_minute }),
            tls,
            real_shape: if self.plain_traffic { RealShape::off() } else { RealShape::default() },
            ..SimServerConfig::default()
        })
    }
}

fn write_cert(id: &polybook_shards::sim_server::TlsIdentity, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, id.cert_pem())
        .with_context(|| format!("cannot write the certificate to {}", path.display()))
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// ANSI colour only for a person at a terminal: never in a redirected log or a journal, and
/// never with `NO_COLOR` set (https://no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Exit codes (sysexits.h where one fits), so a supervisor can tell what to do: restarting
/// does not mend a bad config (systemd: `RestartPreventExitStatus=78 69`).
const EXIT_RUNTIME: u8 = 1;
/// EX_UNAVAILABLE: io_uring cannot be set up (see `engine::uring`).
const EXIT_IO_URING: u8 = 69;
/// EX_SOFTWARE: an engine thread died; a supervisor restarts the process.
const EXIT_THREAD_DIED: i32 = 70;
/// EX_CONFIG: the configuration is invalid or cannot be read.
const EXIT_CONFIG: u8 = 78;

fn exit_code(e: &anyhow::Error) -> u8 {
    use polybook_shards::engine::EngineError;
    if e.chain().any(|c| c.is::<polybook_shards::config::ConfigError>()) {
        return EXIT_CONFIG;
    }
    match e.chain().find_map(|c| c.downcast_ref::<EngineError>()) {
        Some(EngineError::IoUring(_)) => EXIT_IO_URING,
        // A layout the machine cannot run is the config's to fix.
        Some(EngineError::Layout(_)) => EXIT_CONFIG,
        _ => EXIT_RUNTIME,
    }
}

/// The error and its causes on one line, each cause once: a message that already contains
/// its cause's text (many do, to read well alone) is not followed by it again.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polybook: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Loads the file and the environment's overrides, with `api` (a flag) on top.
fn load_config(named: Option<&Path>, api: Option<String>) -> anyhow::Result<Loaded> {
    let mut loaded = Config::load_with_env(named, &|k| std::env::var(k).ok())?;
    if let Some(api) = api {
        loaded.config.api.listen = api;
    }
    Ok(loaded)
}

/// Says where the settings came from, once logging is up.
fn log_config_source(loaded: &Loaded) {
    match &loaded.source {
        ConfigSource::File(path) => tracing::info!(file = %path.display(), "configuration"),
        ConfigSource::Defaults => tracing::info!(
            "no config file (no --config or POLYBOOK_CONFIG, and no ./config.toml): using \
             the defaults"
        ),
    }
    if !loaded.env_applied.is_empty() {
        tracing::info!(variables = ?loaded.env_applied, "environment overrides applied");
    }
}

/// Blocks until SIGINT or SIGTERM; a second one exits the process at once.
fn wait_for_signal() -> anyhow::Result<()> {
    let never = flume::bounded::<polybook_shards::engine::supervise::Failure>(1).1;
    wait_for_signal_or_failure(&never)
}

/// Blocks until SIGINT or SIGTERM (a second one exits at once), or until an engine thread dies:
/// then fail fast (see `engine::supervise`) — log it and exit non-zero without waiting for the
/// other threads, which may be stuck on the dead one.
fn wait_for_signal_or_failure(
    failures: &flume::Receiver<polybook_shards::engine::supervise::Failure>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (sig_tx, sig_rx) = flume::bounded(1);
    std::thread::spawn(move || {
        let mut forever = signals.forever();
        if let Some(sig) = forever.next() {
            let _ = sig_tx.send(sig);
        }
        if forever.next().is_some() {
            std::process::exit(130);
        }
    });
    let failure = flume::Selector::new()
        .recv(&sig_rx, |sig| {
            if let Ok(sig) = sig {
                tracing::info!(signal = sig, "stopping (send again to exit at once)");
            }
            None
        })
        .recv(failures, |f| f.ok())
        .wait();
    if let Some(f) = failure {
        tracing::error!(thread = %f.thread, reason = %f.reason, "engine thread died; exiting");
        eprintln!("polybook: {f}; exiting with code {EXIT_THREAD_DIED}");
        std::process::exit(EXIT_THREAD_DIED);
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, api, record } => {
            let loaded = load_config(config.as_deref(), api)?;
            let cfg = loaded.config.clone().validate()?;
            init_logging(&cfg.log.level, cli.log_json || cfg.log.json);
            log_config_source(&loaded);
            let mut builder = polybook_shards::engine::Engine::builder(cfg);
            if let Some(dir) = record {
                builder = builder.record(dir);
            }
            let engine = builder.start()?;
            tracing::info!("API on http://{}", engine.api_addr());
            wait_for_signal_or_failure(engine.failures())?;
            engine.stop();
            Ok(())
        }
        Command::Sim { sim, replay: Some(recording), speed } => {
            init_logging("info", cli.log_json);
            use polybook_shards::sim_server::replay_venue::serve_recording;
            let (handle, frames, markets) = serve_recording(&recording, &sim.listen, speed)?;
            println!("replay venue on {} ({markets} markets, {frames} frames)", handle.http_url());
            println!("  ws: {}  status: {}/sim/status", handle.ws_url(), handle.http_url());
            wait_for_signal()?;
            handle.stop();
            Ok(())
        }
        Command::Sim { sim, .. } => {
            init_logging("info", cli.log_json);
            let handle = polybook_shards::sim_server::spawn_sim_server(sim.config()?)?;
            println!("simulated exchange on {} (markets: {})", handle.http_url(), sim.markets);
            match (&sim.cert_out, handle.cert_pem()) {
                (Some(path), Some(_)) => println!("  certificate (PEM): {}", path.display()),
                // Printed so it can still be trusted; --cert-out writes it to a file instead.
                (None, Some(pem)) => print!("  certificate:\n{pem}"),
                _ => {}
            }
            println!("  gamma: {}/markets/keyset?closed=false&limit=100", handle.http_url());
            println!("  clob:  {}/book?token_id=...", handle.http_url());
            println!("  ws:    {}", handle.ws_url());
            println!(
                "  truth: {}/sim/book/TOKEN_ID, control: {}/sim/status",
                handle.http_url(),
                handle.http_url()
            );
            wait_for_signal()?;
            handle.stop()?;
            Ok(())
        }
        Command::Demo { config, sim, api, record } => {
            let loaded = load_config(config.as_deref(), api)?;
            let mut cfg = loaded.config.clone();
            init_logging(&cfg.log.level, cli.log_json || cfg.log.json);
            log_config_source(&loaded);
            let started = std::time::Instant::now();
            let sim_cfg = sim.config()?;
            // The engine trusts the simulator's certificate the way a user would: through
            // `tls_roots_file`. Without --cert-out it goes to a file of this process's own.
            let mut demo_cert = None;
            if let Some(id) = &sim_cfg.tls {
                let path = match &sim.cert_out {
                    Some(path) => path.clone(),
                    None => {
                        let path = std::env::temp_dir()
                            .join(format!("polybook-demo-{}.pem", std::process::id()));
                        write_cert(id, &path)?;
                        demo_cert = Some(path.clone());
                        path
                    }
                };
                cfg.endpoints.tls_roots_file = Some(path.display().to_string());
            }
            let handle = polybook_shards::sim_server::spawn_sim_server(sim_cfg)?;
            cfg.endpoints.gamma_url = handle.http_url();
            cfg.endpoints.ws_url = handle.ws_url();
            // The simulator lists markets at once; rediscover often so new ones show quickly.
            cfg.discovery.interval_ms = cfg.discovery.interval_ms.min(10_000);
            let mut builder = polybook_shards::engine::Engine::builder(cfg.validate()?);
            if let Some(dir) = record {
                builder = builder.record(dir);
            }
            let engine = builder.start()?;
            println!("polybook demo: simulated exchange on {}", handle.http_url());
            println!(
                "polybook demo: open http://{}/ for live books (API: /stats, /health, /markets, \
                 /books/TOKEN_ID, /metrics, ws /ws)",
                engine.api_addr()
            );
            println!(
                "polybook demo: started in {} ms; Ctrl-C stops",
                started.elapsed().as_millis()
            );
            wait_for_signal_or_failure(engine.failures())?;
            engine.stop();
            handle.stop()?;
            if let Some(path) = demo_cert {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = load_config(config.as_deref(), None)?;
            let valid = loaded.config.clone().validate()?;
            print!("{}", toml::to_string(&*valid)?);
            let from = match &loaded.source {
                ConfigSource::File(path) => path.display().to_string(),
                ConfigSource::Defaults => "no config file, defaults".to_owned(),
            };
            match loaded.env_applied.as_slice() {
                [] => println!("# {from}: ok"),
                vars => println!("# {from} with {}: ok", vars.join(", ")),
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "polybook", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Export(args) => {
            init_logging("warn", cli.log_json);
            polybook_shards::export::run(&args)
        }
        Command::Replay { file, dump, min_order_size, neg_risk, tick_size, no_verify_hash, at } => {
            init_logging("warn", cli.log_json);
            if polybook_shards::replay::is_recording(&file) {
                let files = polybook_shards::replay::recording_files(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let mut stderr = std::io::stderr();
                let options = polybook_shards::replay::ReplayOptions { at_ns: at };
                let (store, stats) = polybook_shards::replay::replay_recording_with(
                    &files,
                    &mut stderr,
                    options,
                    &mut polybook::store::NoSink,
                )?;
                if dump {
                    println!("{}", polybook_shards::replay::dump_json(&store, &stats)?);
                } else {
                    println!("{}", serde_json::to_string_pretty(&stats)?);
                }
                return Ok(());
            }
            anyhow::ensure!(at.is_none(), "--at needs an engine recording, not a capture");
            let f = File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let meta = TokenMeta {
                tick_size: Some(tick_size),
                min_order_size: Some(min_order_size),
                neg_risk: Some(neg_risk),
            };
            let mut stderr = std::io::stderr();
            let (store, stats) = polybook_shards::replay::replay(
                BufReader::new(f),
                meta,
                !no_verify_hash,
                &mut stderr,
            )
            .with_context(|| format!("reading {}", file.display()))?;
            if dump {
                println!("{}", polybook_shards::replay::dump_json(&store, &stats)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("cannot read x: No such file");
        assert_eq!(one_line(&e), "cannot read x: No such file");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(io).context("cannot read x");
        assert_eq!(one_line(&e), "cannot read x: No such file");
    }

    #[test]
    fn bad_config_and_io_uring_have_their_own_exit_codes() {
        use polybook_shards::config::ConfigError;
        use polybook_shards::engine::uring::{Cause, IoUringUnavailable};
        use polybook_shards::engine::EngineError;
        let bad = ConfigError::Invalid { key: "api.listen", value: "x".into(), why: "no".into() };
        assert_eq!(exit_code(&anyhow::Error::new(bad)), EXIT_CONFIG);
        let uring = EngineError::IoUring(IoUringUnavailable { cause: Cause::Refused });
        assert_eq!(exit_code(&anyhow::Error::new(uring)), EXIT_IO_URING);
        assert_eq!(exit_code(&anyhow::Error::new(EngineError::Api("bind".into()))), EXIT_RUNTIME);
    }

    #[test]
    fn the_help_lists_every_environment_override() {
        for (var, key) in polybook_shards::config::env_overrides() {
            let line = AFTER_HELP.lines().find(|l| l.trim_start().starts_with(var));
            assert!(line.is_some_and(|l| l.contains(key)), "{var} ({key}) missing from help");
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
