//! The mounter's `/metrics`: its own gauges and every bucket server's
//! counters, on one port.
//!
//! A node runs one mounter but many `hubfs mount s3` servers, each with its
//! own counters (S3 requests, bytes, errors, data-cache hits and misses).
//! Giving each a port of its own would leave Prometheus nothing stable to
//! scrape, so each server rewrites its text to `metrics.prom` beside its
//! mountpoint (`hubfs mount s3 --metrics-file`, every 5 s), and the mounter
//! serves them merged: one `# HELP`/`# TYPE` per family, every sample
//! labelled with the `server` it came from.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{ServerStatus, Servers};

/// Where a server's metrics text lies, beside its mountpoint.
pub fn metrics_file(mountpoint: &Path) -> PathBuf {
    mountpoint.with_file_name("metrics.prom")
}

/// Merges metrics texts (OpenMetrics/Prometheus text as `prometheus_client`
/// writes it), labelling each sample with `server="<id>"`. Families keep the
/// order they are first seen in, with the header lines of their first source.
pub fn merge(sources: &[(String, String)]) -> String {
    struct Family {
        header: Vec<String>,
        header_from: usize,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for (i, (server, text)) in sources.iter().enumerate() {
        let mut current = String::new();
        for line in text.lines() {
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            let (name, header) = match line.strip_prefix("# ") {
                Some(rest) => (rest.split(' ').nth(1).unwrap_or_default(), true),
                None if current.is_empty() => (sample_name(line), false),
                None => (current.as_str(), false),
            };
            let name = name.to_string();
            let family = families.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Family {
                    header: Vec::new(),
                    header_from: i,
                    samples: Vec::new(),
                }
            });
            if header {
                if family.header_from == i {
                    family.header.push(line.to_string());
                }
                current = name;
            } else {
                family.samples.push(labelled(line, server));
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let f = &families[&name];
        for line in f.header.iter().chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// `name{a="b"} 1` → `name{server="id",a="b"} 1`; `name 1` → `name{server="id"} 1`.
fn labelled(line: &str, server: &str) -> String {
    let name = sample_name(line);
    let rest = &line[name.len()..];
    let value: String = server
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            '\n' => vec!['\\', 'n'],
            c => vec![c],
        })
        .collect();
    let label = format!("server=\"{value}\"");
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{{label}{labels}"),
        Some(labels) => format!("{name}{{{label},{labels}"),
        None => format!("{name}{{{label}}}{rest}"),
    }
}

/// A server's metrics file, read under a shared `flock`: a dropped server
/// rewrites it in place under an exclusive one (it cannot rename in its
/// root-owned directory), so a read never sees half of it.
fn read_locked(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    std::io::read_to_string(&*file)
}

/// The mounter's own families and those of its servers (`status`), merged.
pub fn render(status: &[ServerStatus]) -> String {
    let mut own = String::from(
        "# HELP hubfs_mounter_servers FUSE servers the mounter keeps.\n\
         # TYPE hubfs_mounter_servers gauge\n",
    );
    own.push_str(&format!("hubfs_mounter_servers {}\n", status.len()));
    own.push_str(
        "# HELP hubfs_mounter_server_healthy Whether a server's mount answers (1) or not (0).\n\
         # TYPE hubfs_mounter_server_healthy gauge\n",
    );
    let mut sources = Vec::new();
    let mut healthy = String::new();
    let mut restarts = String::from(
        "# HELP hubfs_mounter_server_restarts Times a dead server was replaced.\n\
         # TYPE hubfs_mounter_server_restarts counter\n",
    );
    for s in status {
        healthy.push_str(&format!(
            "hubfs_mounter_server_healthy{{server=\"{}\"}} {}\n",
            s.id, s.healthy as u8
        ));
        restarts.push_str(&format!(
            "hubfs_mounter_server_restarts_total{{server=\"{}\"}} {}\n",
            s.id, s.restarts
        ));
        if let Ok(text) = read_locked(&metrics_file(&s.mountpoint)) {
            sources.push((s.id.clone(), text));
        }
    }
    own.push_str(&healthy);
    own.push_str(&restarts);
    // The mounter's own lines carry their labels already.
    let merged = merge(&sources);
    format!("{own}{merged}")
}

/// Serves [`render`] to every HTTP request on `addr`, on a thread of its
/// own. A port still held (by the mounter this one is taking over from,
/// on the host network) is tried again every few seconds: metrics never
/// keep a mounter from starting.
pub fn serve(addr: SocketAddr, servers: Arc<dyn Servers>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut warned = false;
            let listener = loop {
                match TcpListener::bind(addr) {
                    Ok(l) => break l,
                    Err(e) if !std::mem::replace(&mut warned, true) => {
                        tracing::warn!(%addr, error = %e, "cannot serve /metrics yet; trying again every 5 s");
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_secs(5));
            };
            tracing::info!(%addr, "serving /metrics");
            for conn in listener.incoming().flatten() {
                if let Err(e) = answer(conn, servers.as_ref()) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(())
}

fn answer(mut conn: TcpStream, servers: &dyn Servers) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    // Read the request head: closing with unread bytes resets the
    // connection before the client sees the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        match conn.read(&mut buf)? {
            0 => return Ok(()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = render(&servers.status().unwrap_or_default());
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP hubfs_s3_requests S3 requests by operation.\n\
        # TYPE hubfs_s3_requests counter\n\
        hubfs_s3_requests_total{op=\"GetObject\"} 3\n\
        # HELP hubfs_s3_cache_hits Cache hits.\n\
        # TYPE hubfs_s3_cache_hits counter\n\
        hubfs_s3_cache_hits_total 7\n\
        # EOF\n";
    const B: &str = "# HELP hubfs_s3_requests S3 requests by operation.\n\
        # TYPE hubfs_s3_requests counter\n\
        hubfs_s3_requests_total{op=\"GetObject\"} 5\n\
        hubfs_s3_requests_total{} 1\n\
        # EOF\n";

    #[test]
    fn families_are_merged_once_and_every_sample_names_its_server() {
        let out = merge(&[("s-a".into(), A.into()), ("s-\"b".into(), B.into())]);
        let want = "# HELP hubfs_s3_requests S3 requests by operation.\n\
            # TYPE hubfs_s3_requests counter\n\
            hubfs_s3_requests_total{server=\"s-a\",op=\"GetObject\"} 3\n\
            hubfs_s3_requests_total{server=\"s-\\\"b\",op=\"GetObject\"} 5\n\
            hubfs_s3_requests_total{server=\"s-\\\"b\"} 1\n\
            # HELP hubfs_s3_cache_hits Cache hits.\n\
            # TYPE hubfs_s3_cache_hits counter\n\
            hubfs_s3_cache_hits_total{server=\"s-a\"} 7\n\
            # EOF\n";
        assert_eq!(out, want);
    }

    #[test]
    fn nothing_to_merge_is_an_empty_exposition() {
        assert_eq!(merge(&[]), "# EOF\n");
        assert_eq!(merge(&[("x".into(), "".into())]), "# EOF\n");
    }

    #[test]
    fn the_mounter_lists_its_servers_and_their_counters() {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("s3/abc/mnt");
        std::fs::create_dir_all(&mp).unwrap();
        std::fs::write(metrics_file(&mp), A).unwrap();
        let text = render(&[ServerStatus {
            id: "abc".into(),
            what: "bucket".into(),
            mountpoint: mp,
            healthy: true,
            pid: Some(7),
            targets: vec![],
            restarts: 2,
        }]);
        assert!(text.contains("hubfs_mounter_servers 1\n"), "{text}");
        assert!(
            text.contains("hubfs_mounter_server_healthy{server=\"abc\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hubfs_mounter_server_restarts_total{server=\"abc\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("hubfs_s3_cache_hits_total{server=\"abc\"} 7\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
