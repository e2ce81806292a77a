//! Logging setup shared by every subcommand: `tracing` with a text or JSON
//! formatter (JSON for log collectors in the cluster), filtered by `--log-level`
//! or `RUST_LOG`. Logs go to stderr so stdout stays for command output.

use clap::{Args, ValueEnum};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Global logging flags.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HUBFS_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `hubfs=debug,tower=warn` (RUST_LOG syntax).
    #[arg(long, global = true, default_value = "info", env = "HUBFS_LOG")]
    pub log_level: String,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `--log-level`.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .map_err(|e| format!("bad log filter {:?}: {e}", args.log_level))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.log_format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}
