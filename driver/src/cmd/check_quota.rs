//! `hubfs check-quota`: a user's quota in plain words, from a notebook
//! terminal. With no arguments it reads the user's own record, mounted read-only
//! (as the EFS quota monitor hubfs replaces did) at `/quota-control/quota.yaml`; otherwise it asks the controller.
//!
//! Exit codes: 0 ok, 2 nearing-limit, 3 violation, 4 lockout, 5 timed-out,
//! 6 error (record unreadable), 1 the tool itself failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use hubfs_quota::config::Config;
use hubfs_quota::http::{user_status_with, UserStatus};
use hubfs_quota::record::{QuotaRecord, QuotaState};

/// Where the notebook sees its own record (the legacy quota monitor's path).
pub const DEFAULT_FILE: &str = "/quota-control/quota.yaml";

#[derive(Args, Debug)]
pub struct CheckQuotaArgs {
    /// User to ask the controller about (default: $JUPYTERHUB_USER).
    #[arg(long)]
    pub user: Option<String>,
    /// Read this record file instead of asking the controller.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Controller HTTP URL (e.g. http://hubfs-quota:9501).
    #[arg(long, env = "HUBFS_CONTROLLER_URL")]
    pub controller: Option<String>,
    /// Print the full status as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn exit_code(state: &str) -> u8 {
    match QuotaState::parse(state) {
        Some(QuotaState::Ok) => 0,
        Some(QuotaState::NearingLimit) => 2,
        Some(QuotaState::Violation) => 3,
        Some(QuotaState::Lockout) => 4,
        Some(QuotaState::TimedOut) => 5,
        Some(QuotaState::Error) | None => 6,
    }
}

fn from_file(path: &PathBuf) -> anyhow::Result<UserStatus> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rec = QuotaRecord::from_yaml(&text)
        .with_context(|| format!("{} is not a readable quota record", path.display()))?;
    Ok(user_status_with(
        &Config::default(),
        chrono::Utc::now(),
        rec,
        true,
    ))
}

fn from_controller(url: &str, user: &str) -> anyhow::Result<UserStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut u =
            reqwest::Url::parse(url).with_context(|| format!("bad --controller URL {url}"))?;
        u.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("bad --controller URL {url}"))?
            .pop_if_empty()
            .extend(["v1", "users", user]);
        let resp = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?
            .get(u.clone())
            .send()
            .await
            .with_context(|| format!("ask the quota controller at {url}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        if !(status.is_success() || status == reqwest::StatusCode::NOT_FOUND) {
            bail!("quota controller answered {status}: {body}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("quota controller reply not understood: {body}"))
    })
}

pub fn run(args: CheckQuotaArgs) -> anyhow::Result<ExitCode> {
    let status = match (&args.file, &args.controller) {
        (Some(f), _) => from_file(f)?,
        (None, Some(url)) => {
            let user = match args
                .user
                .clone()
                .or_else(|| std::env::var("JUPYTERHUB_USER").ok())
            {
                Some(u) => u,
                None => bail!("no --user and no $JUPYTERHUB_USER: whose quota?"),
            };
            from_controller(url, &user)?
        }
        (None, None) => {
            if args.user.is_some() {
                bail!("--user needs --controller (or $HUBFS_CONTROLLER_URL)");
            }
            from_file(&PathBuf::from(DEFAULT_FILE))?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("User:   {}", status.user);
        println!("Usage:  {}", status.usage);
        println!("State:  {}", status.quota_state);
        if status.overquota_state != "OK" {
            println!("Policy: {}", status.overquota_state);
        }
        if !status.known {
            println!("(no measurement recorded yet)");
        }
        println!();
        println!("{}", status.message);
    }
    Ok(ExitCode::from(exit_code(&status.quota_state)))
}
