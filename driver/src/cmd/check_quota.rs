//! `hubfs check-quota`: a user's quota in plain words, from a notebook
//! terminal.
//!
//! Bytes and inodes come from the home itself when `$HOME` (or `--home`) is
//! a hubfs home: the accounting layer's live counters (`user.hubfs.usage`),
//! the same figures that just refused a write with EDQUOT. State, grace and
//! policy come from the quota controller (`--controller`), or from the
//! user's own record mounted read-only at `/quota-control/quota.yaml` (as
//! the EFS quota monitor hubfs replaces did), and the message is worded with
//! the home's bytes, so the two never disagree. With the controller
//! unreachable it answers from the home alone and says so; where `$HOME` is
//! not a hubfs home it answers from the controller or the record as before.
//!
//! Exit codes: 0 ok, 2 nearing-limit, 3 violation, 4 lockout, 5 timed-out,
//! 6 error (record unreadable), 1 the tool itself failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use hubfs_quota::config::Config;
use hubfs_quota::http::{user_status_live, UserStatus};
use hubfs_quota::live::LiveUsage;
use hubfs_quota::record::{Enforcement, QuotaRecord, QuotaState};

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
    /// The home whose live figures to show (default: $HOME; ignored when
    /// it is not a hubfs home).
    #[arg(long)]
    pub home: Option<PathBuf>,
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

fn from_file(path: &Path, live: Option<&LiveUsage>) -> anyhow::Result<UserStatus> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rec = QuotaRecord::from_yaml(&text)
        .with_context(|| format!("{} is not a readable quota record", path.display()))?;
    Ok(user_status_live(
        &Config::default(),
        chrono::Utc::now(),
        rec,
        true,
        live,
    ))
}

/// Why the controller gave no answer: unreachable (answer from the home
/// instead) or an answer that is wrong (an error).
enum AskError {
    Unreachable(anyhow::Error),
    Failed(anyhow::Error),
}

fn from_controller(
    url: &str,
    user: &str,
    live: Option<&LiveUsage>,
) -> Result<UserStatus, AskError> {
    let fail = |e: anyhow::Error| AskError::Failed(e);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.into()))?;
    rt.block_on(async {
        let mut u = reqwest::Url::parse(url)
            .with_context(|| format!("bad --controller URL {url}"))
            .map_err(fail)?;
        u.path_segments_mut()
            .map_err(|_| fail(anyhow::anyhow!("bad --controller URL {url}")))?
            .pop_if_empty()
            .extend(["v1", "users", user]);
        if let Some(l) = live.filter(|l| l.baseline) {
            u.query_pairs_mut()
                .append_pair("bytes", &l.bytes.to_string())
                .append_pair("inodes", &l.inodes.to_string())
                .append_pair("quota_bytes", &l.quota_bytes.to_string())
                .append_pair("quota_inodes", &l.quota_inodes.to_string());
        }
        let resp = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| fail(e.into()))?
            .get(u.clone())
            .send()
            .await
            .map_err(|e| {
                AskError::Unreachable(
                    anyhow::Error::new(e).context(format!("ask the quota controller at {url}")),
                )
            })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| fail(e.into()))?;
        if status.is_server_error() {
            return Err(AskError::Unreachable(anyhow::anyhow!(
                "quota controller answered {status}: {body}"
            )));
        }
        if !(status.is_success() || status == reqwest::StatusCode::NOT_FOUND) {
            return Err(fail(anyhow::anyhow!(
                "quota controller answered {status}: {body}"
            )));
        }
        serde_json::from_str(&body)
            .with_context(|| format!("quota controller reply not understood: {body}"))
            .map_err(fail)
    })
}

/// The answer from the home's figures alone: the state they imply under the
/// default warning line, no policy.
fn from_home(user: &str, live: &LiveUsage) -> UserStatus {
    let cfg = Config::default();
    let mut rec = QuotaRecord::new(user, &cfg.defaults);
    rec.quota_bytes = 0;
    rec.quota_inodes = 0;
    let mut copy = live.clone();
    copy.baseline = true; // partial or not, these are the only figures there are
    copy.apply_to(&mut rec);
    let mut s = user_status_live(&cfg, chrono::Utc::now(), rec, true, None);
    s.figures = "home".into();
    s
}

fn whose(args: &CheckQuotaArgs) -> Option<String> {
    args.user
        .clone()
        .or_else(|| std::env::var("JUPYTERHUB_USER").ok())
}

/// The home's live figures, if `--home` (or `$HOME`) is a hubfs home.
fn live_figures(args: &CheckQuotaArgs) -> anyhow::Result<Option<LiveUsage>> {
    let home = match &args.home {
        Some(h) => h.clone(),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h),
            None => return Ok(None),
        },
    };
    match LiveUsage::read(&home) {
        Ok(l) => Ok(l),
        // --home named explicitly must be readable; a $HOME that is not
        // is simply not a hubfs home.
        Err(e) if args.home.is_some() => Err(e.into()),
        Err(e) => {
            tracing::debug!(error = %e, "$HOME is not readable as a hubfs home");
            Ok(None)
        }
    }
}

pub fn run(args: CheckQuotaArgs) -> anyhow::Result<ExitCode> {
    let live = live_figures(&args)?;
    let mut notes = Vec::new();
    // Where the state comes from; None: from the home's figures alone.
    let mut state_from = Some("the quota controller".to_string());
    let status = match (&args.file, &args.controller) {
        (Some(f), _) => {
            state_from = Some(f.display().to_string());
            from_file(f, live.as_ref())?
        }
        (None, Some(url)) => {
            let Some(user) = whose(&args) else {
                bail!("no --user and no $JUPYTERHUB_USER: whose quota?");
            };
            match (from_controller(url, &user, live.as_ref()), &live) {
                (Ok(s), _) => s,
                (Err(AskError::Unreachable(e)), Some(l)) => {
                    notes.push(format!(
                        "The quota controller could not be reached ({e:#}); these are your home's own figures, and your quota state and policy are not known right now."
                    ));
                    state_from = None;
                    from_home(&user, l)
                }
                (Err(AskError::Unreachable(e) | AskError::Failed(e)), _) => return Err(e),
            }
        }
        (None, None) => {
            if args.user.is_some() && live.is_none() {
                bail!("--user needs --controller (or $HUBFS_CONTROLLER_URL)");
            }
            let file = Path::new(DEFAULT_FILE);
            match &live {
                Some(l) if !file.exists() => {
                    notes.push(format!(
                        "No quota controller given (--controller or $HUBFS_CONTROLLER_URL) and no {DEFAULT_FILE}: these are your home's own figures; your quota state and policy are not known here."
                    ));
                    state_from = None;
                    from_home(&whose(&args).unwrap_or_else(|| "you".into()), l)
                }
                _ => {
                    state_from = Some(DEFAULT_FILE.to_string());
                    from_file(file, live.as_ref())?
                }
            }
        }
    };
    if live.as_ref().is_some_and(|l| !l.baseline) {
        notes.push(
            "Your home is still being measured (the walk that counts it when it is mounted has not finished): figures may grow.".into(),
        );
    }
    if live.as_ref().is_some_and(|l| l.cleanup) && status.enforcement == Enforcement::None {
        notes.push("Your home is in cleanup mode: writes are refused, deletes work.".into());
    }
    if args.json {
        let mut v = serde_json::to_value(&status)?;
        v["live"] = serde_json::to_value(&live)?;
        v["notes"] = serde_json::to_value(&notes)?;
        v["state_from"] = serde_json::to_value(&state_from)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("User:   {}", status.user);
        println!("Usage:  {}", status.usage);
        println!("State:  {}", status.quota_state);
        if status.overquota_state != "OK" {
            println!("Policy: {}", status.overquota_state);
        }
        let figures = match status.figures.as_str() {
            "home" => "your home (live)".to_string(),
            _ => state_from.clone().unwrap_or_default(),
        };
        match &state_from {
            Some(from) => println!("Source: figures from {figures}, state from {from}"),
            None => println!("Source: figures from {figures}; no quota state"),
        }
        if !status.known {
            println!("(no measurement recorded yet)");
        }
        println!();
        println!("{}", status.message);
        for n in &notes {
            println!("{n}");
        }
    }
    Ok(ExitCode::from(exit_code(&status.quota_state)))
}
