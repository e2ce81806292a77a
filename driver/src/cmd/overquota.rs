//! `hubfs overquota`: the graded overquota policy for admins, after Astakos'
//! `snf-manage overquota`. Dry run by default: prints each user's state, the
//! transition due now and the next scheduled one; `--show-actions` details
//! the actions; `--run` performs due transitions; `--repeat` re-applies the
//! current state's actions. Safe to run daily from cron.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use hubfs_quota::controller::OverquotaOptions;
use hubfs_quota::policy::{Action, PolicyLevel};
use hubfs_quota::record::Enforcement;

#[derive(Args, Debug)]
pub struct OverquotaArgs {
    /// Directory holding the per-user records.
    #[arg(long, env = "HUBFS_CONTROL_DIR")]
    pub control_dir: PathBuf,
    /// Where the homes live (for provisioned capacities).
    #[arg(long, env = "HUBFS_USERS_DIR")]
    pub users_dir: Option<PathBuf>,
    /// The controller's config (policy thresholds and actions).
    #[arg(long, env = "HUBFS_QUOTA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only these users (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub users: Vec<String>,
    /// Only users in these overquota states (OK, OVERQUOTA, SOFT_USER, SOFT_ADMIN, HARD_USER, HARD_ADMIN).
    #[arg(long, value_delimiter = ',')]
    pub states: Vec<String>,
    /// Print the actions of due transitions.
    #[arg(long)]
    pub show_actions: bool,
    /// Perform due transitions and their actions.
    #[arg(long)]
    pub run: bool,
    /// Re-apply the current state's actions (counted: SOFT_USER:2).
    #[arg(long)]
    pub repeat: bool,
    /// Stop servers of users reaching hard enforcement now (else the
    /// controller's next reaper cycle does).
    #[arg(long, env = "HUBFS_HUB_URL")]
    pub hub_url: Option<String>,
    #[arg(long, env = "HUBFS_HUB_TOKEN_FILE")]
    pub hub_token_file: Option<PathBuf>,
}

fn describe(a: &Action, to: PolicyLevel) -> String {
    match a {
        Action::InformUser => "inform_user (tell the user)".into(),
        Action::InformAdmin => "inform_admin (tell the admins)".into(),
        Action::Enforce => match to.enforce_strength() {
            Enforcement::Blocked => "enforce (stop the server, refuse spawns)".into(),
            _ => "enforce (cleanup mode: writes refused, deletes allowed)".into(),
        },
    }
}

pub fn run(args: OverquotaArgs) -> anyhow::Result<ExitCode> {
    let states = args
        .states
        .iter()
        .map(|s| s.parse::<PolicyLevel>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ctrl = super::controller::build(
        &args.control_dir,
        args.users_dir.as_ref(),
        args.hub_url.as_deref(),
        args.hub_token_file.as_ref(),
        args.config.as_ref(),
        None,
        // A cron job: its transitions are logged and kept in the records; the
        // long-running controller posts the Events.
        std::sync::Arc::new(hubfs_quota::events::NoEvents),
    )?;
    let opts = OverquotaOptions {
        users: args.users.clone(),
        states,
        run: args.run,
        repeat: args.repeat,
    };
    let lines = ctrl.overquota(&opts)?;
    if !args.run && !args.repeat {
        println!("dry run: nothing is changed (use --run to perform due transitions)");
    }
    println!(
        "{:<28} {:<14} {:<14} {:<14} NEXT",
        "USER", "QUOTA-STATE", "OVERQUOTA", "DUE-NOW"
    );
    for l in &lines {
        let due = l
            .due
            .as_ref()
            .map(|d| d.to.to_string())
            .unwrap_or_else(|| "-".into());
        let next = l
            .next
            .map(|(lvl, at)| format!("{lvl} on {}", at.format("%Y-%m-%d %H:%M UTC")))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<28} {:<14} {:<14} {:<14} {next}",
            l.user,
            l.quota_state.as_str(),
            l.current.to_string(),
            due
        );
        if args.show_actions {
            if let Some(d) = &l.due {
                if d.actions.is_empty() {
                    println!("    {} -> {}: no actions", d.from, d.to);
                }
                for a in &d.actions {
                    println!("    {} -> {}: {}", d.from, d.to, describe(a, d.to));
                }
            }
        }
        for p in &l.performed {
            println!("    done: {p}");
        }
    }
    if ctrl.has_hub() && (args.run || args.repeat) {
        let rt = tokio::runtime::Runtime::new()?;
        let c = Arc::clone(&ctrl);
        rt.block_on(async move {
            if let Err(e) = c.reaper_cycle().await {
                eprintln!("hubfs overquota: could not enforce through the hub now ({e}); the controller will");
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}
