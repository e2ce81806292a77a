//! Where usage goes: the quota controller, at once on a crossing and in
//! batches otherwise.
//!
//! The home layer must never wait on the network inside a filesystem
//! operation, so changes are accumulated in [`UsageCounters`] and a [`Reporter`]
//! thread ships them every few seconds (and once more at unmount) through a
//! [`UsageSink`]. When the counters cross the warning line or the limit
//! (either way), or refuse growth, they wake the reporter, which sends at
//! once (no sooner than [`MIN_GAP`] after its previous report), so the
//! controller's state is never more than a round trip behind the home's. The controller's answer carries the controller's verdict on the user, so
//! cleanup (no-write) mode is switched on and off with no extra round trip.
//! A batch that fails is retried with the same sequence number; the
//! controller drops it if it had in fact arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::usage::{Snapshot, UsageCounters};

/// Whether a report is a change or a whole figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Signed change since the previous report (write-time accounting).
    Delta,
    /// The whole usage, as measured by a walk.
    Absolute,
}

/// One usage report, as `hubfs.quota.v1.UsageReport`.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub user: String,
    pub kind: ReportKind,
    pub bytes: i64,
    pub inodes: i64,
    pub measured_at: SystemTime,
    /// The walk behind an absolute figure hit its timeout.
    pub timed_out: bool,
    pub walk_seconds: f64,
    pub sequence: u64,
}

/// What the quota controller's answer tells the user's mounts to do (the
/// wire's `hubfs.quota.v1.Enforcement`; the controller's own record of it is
/// `hubfs_quota::record::Enforcement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerVerdict {
    None,
    /// Deletes and truncates only.
    Cleanup,
    /// Server stopped; a mount that still exists stays in cleanup mode.
    Blocked,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot reach the quota controller: {0}")]
    Unavailable(String),
    #[error("the quota controller refused the report: {0}")]
    Refused(String),
}

/// The quota controller as seen by the home layer.
pub trait UsageSink: Send + Sync {
    /// Delivers a batch; returns the controller's verdict on the user if the
    /// answer had one.
    fn send(&self, reports: &[UsageReport]) -> Result<Option<ControllerVerdict>, SinkError>;
}

#[cfg(any(test, feature = "test-util"))]
pub use fake::FakeSink;

#[cfg(any(test, feature = "test-util"))]
mod fake {
    use super::*;
    use parking_lot::Mutex;

    /// An in-memory sink for tests: keeps what it was sent, answers with a
    /// settable verdict and can be told to fail.
    #[derive(Debug, Default)]
    pub struct FakeSink {
        pub received: Mutex<Vec<UsageReport>>,
        pub verdict: Mutex<Option<ControllerVerdict>>,
        pub failing: std::sync::atomic::AtomicBool,
        /// The sequence numbers of every batch sent, delivered or not.
        pub attempts: Mutex<Vec<Vec<u64>>>,
        /// Signalled after every batch.
        sent: parking_lot::Condvar,
    }

    impl UsageSink for FakeSink {
        fn send(&self, reports: &[UsageReport]) -> Result<Option<ControllerVerdict>, SinkError> {
            self.attempts
                .lock()
                .push(reports.iter().map(|r| r.sequence).collect());
            self.sent.notify_all();
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(SinkError::Unavailable("fake outage".into()));
            }
            let mut got = self.received.lock();
            for r in reports {
                // Like the controller: a retried sequence is not applied twice.
                if !got.iter().any(|g| g.sequence == r.sequence) {
                    got.push(r.clone());
                }
            }
            Ok(*self.verdict.lock())
        }
    }

    impl FakeSink {
        /// Waits until `pred` holds for the batches attempted so far (or 30 s
        /// pass: a reporter that never sends fails the test on what it
        /// asserts next, not here); returns how many were attempted.
        pub fn wait_until(&self, mut pred: impl FnMut(&FakeSink) -> bool) -> usize {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut attempts = self.attempts.lock();
            loop {
                drop(attempts);
                if pred(self) {
                    return self.attempts.lock().len();
                }
                attempts = self.attempts.lock();
                if self
                    .sent
                    .wait_until(
                        &mut attempts,
                        deadline.min(std::time::Instant::now() + Duration::from_millis(50)),
                    )
                    .timed_out()
                    && std::time::Instant::now() >= deadline
                {
                    drop(attempts);
                    return self.attempts.lock().len();
                }
            }
        }

        /// Sum of the deltas received, for comparing with the counters.
        pub fn delta_total(&self) -> (i64, i64) {
            self.received
                .lock()
                .iter()
                .filter(|r| r.kind == ReportKind::Delta)
                .fold((0, 0), |(b, i), r| (b + r.bytes, i + r.inodes))
        }
    }
}

/// The real sink: `hubfs.quota.v1.Quota/ReportUsage` over gRPC.
pub struct GrpcSink {
    rt: tokio::runtime::Runtime,
    endpoint: tonic::transport::Endpoint,
    node_id: String,
    user: String,
}

impl GrpcSink {
    /// `endpoint` is a URL such as `http://hubfs-quota:9500`.
    pub fn new(endpoint: &str, node_id: &str, user: &str) -> Result<Self, SinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| SinkError::Unavailable(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        Ok(GrpcSink {
            rt,
            endpoint,
            node_id: node_id.to_string(),
            user: user.to_string(),
        })
    }
}

fn to_proto(r: &UsageReport) -> hubfs_proto::quota::UsageReport {
    use hubfs_proto::quota::{ReportKind as K, UsageSource as S};
    let at = r
        .measured_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hubfs_proto::quota::UsageReport {
        user: r.user.clone(),
        kind: match r.kind {
            ReportKind::Delta => K::Delta,
            ReportKind::Absolute => K::Absolute,
        } as i32,
        source: match r.kind {
            ReportKind::Delta => S::Write,
            ReportKind::Absolute => S::Walk,
        } as i32,
        bytes: r.bytes,
        inodes: r.inodes,
        measured_at: Some(hubfs_proto::prost_types::Timestamp {
            seconds: at.as_secs() as i64,
            nanos: at.subsec_nanos() as i32,
        }),
        timed_out: r.timed_out,
        walk_seconds: r.walk_seconds,
        sequence: r.sequence,
    }
}

impl UsageSink for GrpcSink {
    fn send(&self, reports: &[UsageReport]) -> Result<Option<ControllerVerdict>, SinkError> {
        use hubfs_proto::quota::{quota_client::QuotaClient, Enforcement as E, ReportUsageRequest};
        let req = ReportUsageRequest {
            node_id: self.node_id.clone(),
            reports: reports.iter().map(to_proto).collect(),
        };
        let resp = self.rt.block_on(async {
            let channel = self
                .endpoint
                .connect()
                .await
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
            QuotaClient::new(channel)
                .report_usage(req)
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        SinkError::Unavailable(s.message().to_string())
                    }
                    _ => SinkError::Refused(s.message().to_string()),
                })
        })?;
        let q = resp
            .into_inner()
            .quotas
            .into_iter()
            .find(|q| q.user == self.user);
        Ok(q.and_then(|q| match E::try_from(q.enforcement) {
            Ok(E::None) => Some(ControllerVerdict::None),
            Ok(E::Cleanup) => Some(ControllerVerdict::Cleanup),
            Ok(E::Blocked) => Some(ControllerVerdict::Blocked),
            _ => None,
        }))
    }
}

/// The least time between two reports of one home: a crossing right after
/// a report waits this long, so a home going back and forth over a line
/// costs the controller at most 1 s / `MIN_GAP` reports a second, and a
/// crossing still reaches it well within a second.
pub const MIN_GAP: Duration = Duration::from_millis(200);

/// Ships usage from a [`UsageCounters`] to a sink, on a thread: at once when
/// the home crosses a line (see [`super::usage::Zone`]) or growth is refused,
/// and otherwise in batches every `interval`.
pub struct Reporter {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

enum Msg {
    Absolute(UsageReport),
    /// The counters crossed a line (sent once until taken: see `pending`).
    Crossing,
    Stop,
}

struct State {
    usage: Arc<UsageCounters>,
    sink: Arc<dyn UsageSink>,
    user: String,
    next_seq: u64,
    /// Sent but not acknowledged; resent as is (same sequence numbers).
    unacked: Vec<UsageReport>,
    /// Every change taken from the counters since the mount: the baseline
    /// plus this is the home's total, with no race against writers.
    taken: Snapshot,
}

impl Reporter {
    pub fn start(
        usage: Arc<UsageCounters>,
        sink: Arc<dyn UsageSink>,
        user: &str,
        interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        // One message per burst of crossings: the wake-up runs inside
        // filesystem operations and must cost an atomic swap, not a queue
        // that grows while a writer hammers EDQUOT.
        let pending = Arc::new(AtomicBool::new(false));
        {
            let (tx, pending) = (tx.clone(), pending.clone());
            usage.on_crossing(move || {
                if !pending.swap(true, Ordering::AcqRel) {
                    let _ = tx.send(Msg::Crossing);
                }
            });
        }
        // Sequence numbers must grow across restarts of the mount: start from
        // the clock in microseconds.
        let next_seq = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let mut st = State {
            usage,
            sink,
            user: user.to_string(),
            next_seq,
            unacked: Vec::new(),
            taken: Default::default(),
        };
        let thread = std::thread::Builder::new()
            .name("hubfs-report".into())
            .spawn(move || {
                let mut last = Instant::now();
                // When a crossing is to be sent (not before `last + MIN_GAP`).
                let mut urgent: Option<Instant> = None;
                loop {
                    let due = urgent.map_or(last + interval, |u| u.min(last + interval));
                    match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                        Ok(Msg::Absolute(mut r)) => {
                            // Baseline plus every change so far; the changes not
                            // yet reported are part of it, not on top. (Not the
                            // counters: they hold reservations in flight, and a
                            // writer between reading them and taking the delta
                            // would count twice or not at all.)
                            let _ = st.take();
                            r.bytes += st.taken.bytes;
                            r.inodes += st.taken.inodes;
                            r.sequence = st.seq();
                            st.unacked.push(r);
                            st.flush();
                            (last, urgent) = (Instant::now(), None);
                        }
                        Ok(Msg::Crossing) => {
                            pending.store(false, Ordering::Release);
                            let at = last + MIN_GAP;
                            if Instant::now() >= at {
                                st.flush();
                                (last, urgent) = (Instant::now(), None);
                            } else {
                                urgent = Some(urgent.map_or(at, |u| u.min(at)));
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            st.flush();
                            (last, urgent) = (Instant::now(), None);
                        }
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                            st.flush();
                            return;
                        }
                    }
                }
            })
            .expect("spawn reporter thread");
        Reporter {
            tx,
            thread: Some(thread),
        }
    }

    /// Queues an absolute report after a walk; it is sent at once. Its
    /// bytes and inodes are the walk's baseline (as added to the counters):
    /// the reporter adds every change made since the mount.
    pub fn absolute(&self, r: UsageReport) {
        let _ = self.tx.send(Msg::Absolute(r));
    }

    /// A handle that queues absolute reports from another thread.
    pub fn absolute_sender(&self) -> impl Fn(UsageReport) + Send + 'static {
        let tx = self.tx.clone();
        move |r| {
            let _ = tx.send(Msg::Absolute(r));
        }
    }

    /// Sends what is left and stops.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn take(&mut self) -> Snapshot {
        let d = self.usage.take_delta();
        self.taken.bytes += d.bytes;
        self.taken.inodes += d.inodes;
        d
    }

    fn flush(&mut self) {
        let d = self.take();
        if d.bytes != 0 || d.inodes != 0 {
            let sequence = self.seq();
            self.unacked.push(UsageReport {
                user: self.user.clone(),
                kind: ReportKind::Delta,
                bytes: d.bytes,
                inodes: d.inodes,
                measured_at: SystemTime::now(),
                timed_out: false,
                walk_seconds: 0.0,
                sequence,
            });
        }
        if self.unacked.is_empty() {
            return;
        }
        match self.sink.send(&self.unacked) {
            Ok(verdict) => {
                self.unacked.clear();
                if let Some(e) = verdict {
                    let cleanup = e != ControllerVerdict::None;
                    if cleanup != self.usage.cleanup() {
                        tracing::info!(user = %self.user, cleanup, "quota controller switched enforcement");
                    }
                    self.usage.set_cleanup(cleanup);
                }
            }
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, pending = self.unacked.len(), "usage report not delivered; will retry");
                // Bound memory during a long outage: the last absolute
                // report covers every delta before it; the deltas after it
                // go back to the counters to be sent as one.
                if self.unacked.len() > 64 {
                    let folded = self.unacked.split_off(0);
                    let last_abs = folded.iter().rposition(|r| r.kind == ReportKind::Absolute);
                    let (mut b, mut i) = (0, 0);
                    for (n, r) in folded.into_iter().enumerate() {
                        match r.kind {
                            ReportKind::Absolute if Some(n) == last_abs => self.unacked.push(r),
                            ReportKind::Delta if last_abs.is_none_or(|a| n > a) => {
                                b += r.bytes;
                                i += r.inodes;
                            }
                            _ => {}
                        }
                    }
                    self.taken.bytes -= b;
                    self.taken.inodes -= i;
                    self.usage.restore_delta(Snapshot {
                        bytes: b,
                        inodes: i,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::usage::Limits;
    use std::sync::atomic::Ordering;

    fn setup() -> (Arc<UsageCounters>, Arc<FakeSink>) {
        (
            Arc::new(UsageCounters::new(Limits::default())),
            Arc::new(FakeSink::default()),
        )
    }

    #[test]
    fn a_long_outage_keeps_the_last_absolute_and_only_the_deltas_after_it() {
        let (u, sink) = setup();
        sink.failing.store(true, Ordering::Relaxed);
        let report = |kind, bytes| UsageReport {
            user: "dan".into(),
            kind,
            bytes,
            inodes: 0,
            measured_at: SystemTime::now(),
            timed_out: false,
            walk_seconds: 0.0,
            sequence: 0,
        };
        let mut unacked: Vec<_> = (0..30).map(|_| report(ReportKind::Delta, 1)).collect();
        unacked.push(report(ReportKind::Absolute, 1000));
        unacked.extend((0..40).map(|_| report(ReportKind::Delta, 2)));
        let mut st = State {
            usage: u.clone(),
            sink: sink.clone(),
            user: "dan".into(),
            next_seq: 1,
            unacked,
            taken: Snapshot {
                bytes: 110,
                inodes: 0,
            },
        };
        st.flush();
        assert_eq!(st.unacked.len(), 1);
        assert_eq!(st.unacked[0].bytes, 1000);
        // the 30 deltas before it are inside the absolute figure
        assert_eq!(u.take_delta().bytes, 80);
        assert_eq!(st.taken.bytes, 30);
    }

    fn limited(bytes: u64) -> Arc<UsageCounters> {
        Arc::new(UsageCounters::new(Limits {
            bytes: Some(bytes),
            ..Limits::default()
        }))
    }

    #[test]
    fn a_crossing_is_reported_at_once_with_the_batch_before_it() {
        let u = limited(1000);
        let sink = Arc::new(FakeSink::default());
        // An hour between batches: anything sent is sent because of a crossing.
        let rep = Reporter::start(u.clone(), sink.clone(), "erin", Duration::from_secs(3600));
        for _ in 0..7 {
            u.apply(100, 1); // 700 of 1000: under the warning line
        }
        u.apply(100, 1); // 800: the warning line
        let n = sink.wait_until(|s| !s.received.lock().is_empty());
        assert_eq!(n, 1, "one report for the crossing");
        assert_eq!(sink.delta_total(), (800, 8), "with the changes before it");
        // Back under the line: reported too.
        u.apply(-500, -5);
        let n = sink.wait_until(|s| s.received.lock().len() == 2);
        assert_eq!(n, 2);
        assert_eq!(sink.delta_total(), (300, 3));
        // Refused growth (EDQUOT) is news as well: the figure at the refusal.
        u.apply(690, 0); // 990: full
        let n = sink.wait_until(|s| s.received.lock().len() == 3);
        assert_eq!(n, 3);
        assert!(u.reserve(50, 0).is_err());
        u.apply(-5, 0); // a change the refusal's report carries
        let n = sink.wait_until(|s| s.received.lock().len() == 4);
        assert_eq!((n, sink.delta_total()), (4, (985, 3)));
        rep.stop();
    }

    #[test]
    fn crossings_back_and_forth_are_bounded_by_the_gap() {
        let u = limited(1000);
        let sink = Arc::new(FakeSink::default());
        let rep = Reporter::start(u.clone(), sink.clone(), "fay", Duration::from_secs(3600));
        let started = Instant::now();
        for _ in 0..2000 {
            u.apply(900, 0);
            u.apply(-900, 0);
        }
        u.apply(850, 0);
        let elapsed = started.elapsed();
        // The last figure arrives (within MIN_GAP of the previous report) ...
        let n = sink.wait_until(|s| s.delta_total() == (850, 0));
        assert_eq!(sink.delta_total(), (850, 0));
        // ... after at most one report per MIN_GAP, not one per crossing (4001).
        let bound = 2 + (elapsed.as_millis() / MIN_GAP.as_millis()) as usize + 1;
        assert!(n <= bound, "{n} reports for 4001 crossings in {elapsed:?}");
        rep.stop();
    }

    #[test]
    fn deltas_are_batched_and_flushed_on_stop() {
        let (u, sink) = setup();
        let rep = Reporter::start(u.clone(), sink.clone(), "alice", Duration::from_secs(3600));
        u.apply(100, 1);
        u.apply(-30, 0);
        rep.stop();
        assert_eq!(sink.delta_total(), (70, 1));
        assert_eq!(sink.received.lock().len(), 1);
        assert_eq!(sink.received.lock()[0].user, "alice");
    }

    #[test]
    fn a_failed_batch_is_retried_with_the_same_sequence() {
        let (u, sink) = setup();
        let mut st = State {
            usage: u.clone(),
            sink: sink.clone(),
            user: "bob".into(),
            next_seq: 100,
            unacked: Vec::new(),
            taken: Snapshot::default(),
        };
        sink.failing.store(true, Ordering::Relaxed);
        u.apply(5, 1);
        st.flush();
        assert!(sink.received.lock().is_empty());
        assert_eq!(*sink.attempts.lock(), vec![vec![101]]);
        // the next flush resends 101 as it was, with the new change as 102
        sink.failing.store(false, Ordering::Relaxed);
        u.apply(7, 0);
        st.flush();
        assert_eq!(*sink.attempts.lock(), vec![vec![101], vec![101, 102]]);
        let got = sink.received.lock();
        let seqs: Vec<_> = got
            .iter()
            .map(|r| (r.sequence, r.bytes, r.inodes))
            .collect();
        assert_eq!(seqs, vec![(101, 5, 1), (102, 7, 0)]);
        assert!(st.unacked.is_empty());
    }

    #[test]
    fn the_answer_switches_cleanup_mode() {
        let (u, sink) = setup();
        *sink.verdict.lock() = Some(ControllerVerdict::Cleanup);
        let rep = Reporter::start(u.clone(), sink.clone(), "carol", Duration::from_secs(3600));
        u.add_baseline(40, 2);
        u.apply(2, 0);
        rep.absolute(UsageReport {
            user: "carol".into(),
            kind: ReportKind::Absolute,
            bytes: 40,
            inodes: 2,
            measured_at: SystemTime::now(),
            timed_out: false,
            walk_seconds: 0.1,
            sequence: 0,
        });
        rep.stop();
        assert!(u.cleanup());
        let got = sink.received.lock();
        assert_eq!(got[0].kind, ReportKind::Absolute);
        assert_eq!(
            (got[0].bytes, got[0].inodes),
            (42, 2),
            "totals, delta included"
        );
        assert_eq!(got.len(), 1, "the delta is part of the absolute figure");
        assert_ne!(got[0].sequence, 0);
    }

    #[test]
    fn proto_conversion_keeps_every_field() {
        let r = UsageReport {
            user: "d".into(),
            kind: ReportKind::Absolute,
            bytes: -3,
            inodes: 4,
            measured_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1500),
            timed_out: true,
            walk_seconds: 2.5,
            sequence: 9,
        };
        let p = to_proto(&r);
        assert_eq!(p.kind, hubfs_proto::quota::ReportKind::Absolute as i32);
        assert_eq!(p.source, hubfs_proto::quota::UsageSource::Walk as i32);
        assert_eq!(
            (p.bytes, p.inodes, p.sequence, p.timed_out),
            (-3, 4, 9, true)
        );
        let ts = p.measured_at.unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_000));
    }
}
