//! The `polybook` binary: parse the command line, set up logging, run the chosen command.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use polybook::book::TokenMeta;
use polybook::{Price, Size};

#[derive(Parser, Debug)]
#[command(name = "polybook", version, about = "Live, exact Polymarket L2 books")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a configuration file and print the resolved settings.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Apply a recorded capture (one frame per line, optional `recv_ns ` prefix) to fresh books.
    Replay {
        /// The capture file.
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
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polybook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { config } => {
            let valid = polybook_shards::config::Config::load(&config)?.validate()?;
            print!("{}", toml::to_string(&*valid)?);
            println!("# {}: ok", config.display());
            Ok(())
        }
        Command::Replay { file, dump, min_order_size, neg_risk, tick_size, no_verify_hash } => {
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
