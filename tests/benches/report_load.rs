//! How much load 1,000 homes put on the quota controller, and how fresh
//! its figures are (issue 21): every home's real reporter
//! (`hubfs_fuse::home::Reporter`, its counters and `GrpcSink`) against the
//! real `hubfs controller` binary on loopback, the homes writing steadily
//! (1 MiB/s each in 64 KiB writes, half of them crossing their warning line
//! during the run).
//!
//! Measured per round: reports (RPCs) per second at the controller, the
//! figures it applied, its CPU, and the delay from a write that crosses a
//! line to the end of the first report sent after it (the controller has
//! decided by then). Two ways are measured in the same run, interleaved,
//! `ROUNDS` times each (medians printed, with the ratio):
//!
//! * hubfs: batches every 5 s, a crossing reported at once;
//! * peer: batches every 1 s (the other way to a 1 s freshness).
//!
//! Before issue 21 the home layer sent only the 5 s batches, so a crossing
//! waited for the next batch: 0–5 s, 2.5 s on average.
//!
//! `bench/reports.sh` runs it (`HOMES`, `SECONDS`, `ROUNDS`, `HUBFS_BIN`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hubfs_e2e::hub::free_port;
use hubfs_fuse::home::sink::{ReportKind, SinkError};
use hubfs_fuse::home::{
    ControllerVerdict, GrpcSink, Limits, Reporter, UsageCounters, UsageReport, UsageSink, Zone,
};

const GIB: u64 = 1 << 30;
const WRITE: u64 = 64 << 10;
/// Writes per second per home (1 MiB/s).
const WRITES_PER_SECOND: u64 = 16;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A sink that times every send around the real one.
struct Timed {
    inner: GrpcSink,
    /// (started, finished) of every successful send.
    sends: Mutex<Vec<(Instant, Instant)>>,
    rpcs: Arc<AtomicU64>,
}

impl UsageSink for Timed {
    fn send(&self, reports: &[UsageReport]) -> Result<Option<ControllerVerdict>, SinkError> {
        let start = Instant::now();
        let r = self.inner.send(reports);
        if r.is_ok() {
            self.sends.lock().unwrap().push((start, Instant::now()));
            self.rpcs.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

struct Controller {
    child: Child,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_controller(hubfs: &Path, homes: usize) -> (Controller, String) {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("users/.hubfs");
    std::fs::create_dir_all(&meta).unwrap();
    for i in 0..homes {
        std::fs::write(
            meta.join(format!("bench-{i}.json")),
            format!("{{\"capacity_bytes\": {GIB}}}"),
        )
        .unwrap();
    }
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(hubfs)
        .args(["controller", "--control-dir"])
        .arg(dir.path().join("control"))
        .arg("--users-dir")
        .arg(dir.path().join("users"))
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hubfs controller");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "controller did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (
        Controller {
            child,
            http,
            _dir: dir,
        },
        format!("http://127.0.0.1:{grpc}"),
    )
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn reports_applied(http: u16) -> f64 {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    use std::io::{Read, Write};
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("hubfs_quota_reports_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Round {
    rpcs_per_second: f64,
    reports_per_second: f64,
    controller_cpu: f64,
    /// Delays from a crossing write to the end of the first send after it.
    delays: Vec<Duration>,
    crossings: usize,
}

fn round(hubfs: &Path, homes: usize, secs: u64, interval: Duration) -> Round {
    let (ctl, endpoint) = start_controller(hubfs, homes);
    let rpcs = Arc::new(AtomicU64::new(0));
    let warn = (0.8 * GIB as f64) as u64;
    let mut sinks = Vec::new();
    let mut counters = Vec::new();
    let mut reporters = Vec::new();
    let rate = WRITE * WRITES_PER_SECOND;
    for i in 0..homes {
        let user = format!("bench-{i}");
        let u = Arc::new(UsageCounters::new(Limits {
            bytes: Some(GIB),
            inodes: None,
            warn_fraction: 0.8,
        }));
        // Even homes cross the warning line at a time spread over the run
        // (after 1 s .. secs-1 s of writing); odd ones stay well under it.
        let start = if i % 2 == 0 {
            let at = 1.0 + (secs as f64 - 2.0) * (i as f64 / homes as f64);
            warn - (at * rate as f64) as u64
        } else {
            GIB / 4
        };
        u.add_baseline(start, 1);
        let sink = Arc::new(Timed {
            inner: GrpcSink::new(&endpoint, &format!("node-{}", i % 16), &user).unwrap(),
            sends: Mutex::new(Vec::new()),
            rpcs: rpcs.clone(),
        });
        let rep = Reporter::start(u.clone(), sink.clone(), &user, interval);
        rep.absolute(UsageReport {
            user: user.clone(),
            kind: ReportKind::Absolute,
            bytes: start as i64,
            inodes: 1,
            measured_at: SystemTime::now(),
            timed_out: false,
            walk_seconds: 0.1,
            sequence: 0,
        });
        sinks.push(sink);
        counters.push(u);
        reporters.push(rep);
    }
    // Let the walks' absolute reports land before measuring.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (rpcs.load(Ordering::Relaxed) as usize) < homes && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let crossed_at: Vec<Mutex<Option<Instant>>> = (0..homes).map(|_| Mutex::new(None)).collect();
    let rpc0 = rpcs.load(Ordering::Relaxed);
    let applied0 = reports_applied(ctl.http);
    let cpu0 = cpu_seconds(ctl.child.id());
    let t0 = Instant::now();
    // Two writer threads, each serving half the homes, 16 ticks a second.
    std::thread::scope(|s| {
        for part in 0..2 {
            let (counters, crossed_at) = (&counters, &crossed_at);
            s.spawn(move || {
                let tick = Duration::from_secs(1) / WRITES_PER_SECOND as u32;
                let mut next = t0;
                while t0.elapsed() < Duration::from_secs(secs) {
                    for (i, u) in counters.iter().enumerate().skip(part).step_by(2) {
                        // Taken before the write: the reporter is woken
                        // inside it and may have sent before it returns.
                        let (before, at) = (u.zone(), Instant::now());
                        if let Ok(r) = u.reserve(WRITE, 0) {
                            u.settle(r, WRITE as i64, 0);
                        }
                        if before == Zone::Under && u.zone() != Zone::Under {
                            crossed_at[i].lock().unwrap().get_or_insert(at);
                        }
                    }
                    next += tick;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            });
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let rpc = rpcs.load(Ordering::Relaxed) - rpc0;
    let applied = reports_applied(ctl.http) - applied0;
    let cpu = cpu_seconds(ctl.child.id()) - cpu0;
    drop(reporters); // the last batches
    let mut delays = Vec::new();
    for (i, at) in crossed_at.iter().enumerate() {
        let Some(at) = *at.lock().unwrap() else {
            continue;
        };
        let first = sinks[i]
            .sends
            .lock()
            .unwrap()
            .iter()
            .filter(|(start, _)| *start >= at)
            .map(|(_, end)| *end)
            .min();
        if let Some(end) = first {
            delays.push(end - at);
        }
    }
    delays.sort();
    Round {
        rpcs_per_second: rpc as f64 / elapsed,
        reports_per_second: applied / elapsed,
        controller_cpu: cpu / elapsed,
        crossings: crossed_at
            .iter()
            .filter(|c| c.lock().unwrap().is_some())
            .count(),
        delays,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(d: &[Duration], p: f64) -> f64 {
    if d.is_empty() {
        return f64::NAN;
    }
    d[((d.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let homes = env_or("HOMES", 1000) as usize;
    let secs = env_or("SECONDS", 20);
    let rounds = env_or("ROUNDS", 3);
    let hubfs = std::env::var_os("HUBFS_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(hubfs_e2e::hubfs_binary);
    println!(
        "report_load: {homes} homes, 1 MiB/s each in 64 KiB writes, half crossing their warning line; {secs} s per round, {rounds} rounds each, interleaved; controller {}",
        hubfs.display()
    );
    let ways = [
        (
            "hubfs: 5 s batches + crossings at once",
            Duration::from_secs(5),
        ),
        ("peer: 1 s batches", Duration::from_secs(1)),
    ];
    let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (w, (name, interval)) in ways.iter().enumerate() {
            let x = round(&hubfs, homes, secs, *interval);
            println!(
                "  round {} {name}: {:.0} RPCs/s, {:.0} figures applied/s, controller CPU {:.2} cores, {} crossings, delay p50 {:.0} ms p95 {:.0} ms max {:.0} ms",
                r + 1,
                x.rpcs_per_second,
                x.reports_per_second,
                x.controller_cpu,
                x.crossings,
                pct(&x.delays, 0.5),
                pct(&x.delays, 0.95),
                pct(&x.delays, 1.0),
            );
            results[w].push(x);
        }
    }
    let summary = |rs: &[Round]| {
        (
            median(rs.iter().map(|r| r.rpcs_per_second).collect()),
            median(rs.iter().map(|r| r.reports_per_second).collect()),
            median(rs.iter().map(|r| r.controller_cpu).collect()),
            median(rs.iter().map(|r| pct(&r.delays, 0.5)).collect()),
            median(rs.iter().map(|r| pct(&r.delays, 0.95)).collect()),
            median(rs.iter().map(|r| pct(&r.delays, 1.0)).collect()),
        )
    };
    let h = summary(&results[0]);
    let p = summary(&results[1]);
    println!("medians of {rounds} rounds (machine shared with other builds):");
    for ((name, _), s) in ways.iter().zip([h, p]) {
        println!(
            "  {name}: {:.0} RPCs/s, {:.0} figures/s, controller CPU {:.2} cores; crossing -> controller p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
            s.0, s.1, s.2, s.3, s.4, s.5
        );
    }
    println!(
        "  ratio hubfs/peer: RPCs {:.2}x, controller CPU {:.2}x, p95 delay {:.2}x; before issue 21 (5 s batches only): a crossing waited 0-5000 ms (2500 ms on average)",
        h.0 / p.0,
        h.2 / p.2,
        h.4 / p.4
    );
}
