//! The command line: `serve` (the default), `check-config`, `sign`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{telemetry, verify, Application};

#[derive(Parser)]
#[command(
    name = "accelerate-relay",
    version,
    about = "Relays Checkout.com payment webhooks to Accelerate"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Validate the environment and print what would run, secrets masked.
    CheckConfig,
    /// Print the Cko-Signature of FILE (or standard input) under KEY.
    Sign {
        #[arg(long)]
        key: String,
        file: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::CheckConfig => check_config(),
        Command::Sign { key, file } => sign(&key, file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accelerate-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let config = Config::from_env().context("configuration error")?;
    telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(async {
        let app = Application::build(config).await?;
        app.run_until_stopped().await?;
        anyhow::Ok(())
    })
}

fn check_config() -> anyhow::Result<()> {
    let config = Config::from_env().context("configuration error")?;
    println!("listen:              {}", config.listen);
    println!(
        "database:            {}",
        database_display(config.database.url.expose())
    );
    for env in config.environments() {
        let creds = config
            .credentials(env)
            .expect("listed environments have keys");
        println!("environment:         {env}");
        println!("  authorization key: {}", creds.authorization.masked());
        println!("  signature key:     {}", creds.signature.masked());
        println!("  forwards to:       {}", config.accelerate_url(env));
    }
    println!("event types:         {}", config.event_types.join(","));
    println!("max body bytes:      {}", config.max_body_bytes);
    println!(
        "delivery timeout:    {} ms",
        config.delivery_timeout.as_millis()
    );
    println!("delivery concurrency:{:>2}", config.delivery_concurrency);
    println!("retry schedule:      {}", config.retry_schedule);
    println!(
        "retention:           {} h",
        config.retention.as_secs() / 3600
    );
    println!("log format:          {:?}", config.log_format);
    Ok(())
}

/// The database URL without its password.
fn database_display(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn sign(key: &str, file: Option<PathBuf>) -> anyhow::Result<()> {
    let body = match file {
        Some(path) => {
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read standard input")?;
            body
        }
    };
    println!("{}", verify::sign(key.as_bytes(), &body));
    Ok(())
}
