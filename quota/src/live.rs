//! A mounted hubfs home's own figures, as users see them.
//!
//! The home layer keeps the exact usage of a home as it is written and
//! shows it on the mount's root as the `user.hubfs.usage` attribute
//! (`bytes=… inodes=… quota_bytes=… quota_inodes=… baseline=0|1
//! mode=normal|cleanup zone=under|warning|full`). `hubfs check-quota`, the
//! controller's HTTP API (when a caller passes these figures) and the
//! JupyterLab extension show bytes from here, so what a user reads agrees
//! with the EDQUOT the filesystem just gave them; the controller still
//! decides state and policy. A directory without the attribute is not a
//! hubfs home, and the callers fall back to the controller's figures.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::QuotaRecord;

/// The attribute on a home's root (the home layer's `XATTR_USAGE`).
pub const XATTR_USAGE: &str = "user.hubfs.usage";

/// The live figures of one home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveUsage {
    pub bytes: i64,
    pub inodes: i64,
    /// 0 = no limit.
    pub quota_bytes: u64,
    pub quota_inodes: u64,
    /// False while the mount-time walk still runs: the figures are partial.
    pub baseline: bool,
    /// Cleanup (no-write) mode is on.
    pub cleanup: bool,
    /// `under`, `warning` or `full` (the home layer's `Zone`).
    pub zone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot read {attr} of {path}: {source}")]
    Read {
        attr: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{attr} is not understood ({text:?}): {why}")]
    Parse {
        attr: &'static str,
        text: String,
        why: String,
    },
}

impl LiveUsage {
    /// Parses the attribute's text. Unknown keys are ignored (a newer home
    /// layer may add some); the figures must be there.
    pub fn parse(text: &str) -> Result<LiveUsage, LiveError> {
        let bad = |why: String| LiveError::Parse {
            attr: XATTR_USAGE,
            text: text.chars().take(200).collect(),
            why,
        };
        let mut l = LiveUsage {
            bytes: -1,
            inodes: -1,
            quota_bytes: 0,
            quota_inodes: 0,
            baseline: false,
            cleanup: false,
            zone: "under".into(),
        };
        for field in text.split_ascii_whitespace() {
            let Some((k, v)) = field.split_once('=') else {
                return Err(bad(format!("{field:?} is not key=value")));
            };
            let num = |v: &str| v.parse::<i64>().map_err(|e| bad(format!("{k}: {e}")));
            match k {
                "bytes" => l.bytes = num(v)?,
                "inodes" => l.inodes = num(v)?,
                "quota_bytes" => l.quota_bytes = num(v)?.max(0) as u64,
                "quota_inodes" => l.quota_inodes = num(v)?.max(0) as u64,
                "baseline" => l.baseline = v == "1",
                "mode" => l.cleanup = v == "cleanup",
                "zone" => l.zone = v.to_string(),
                _ => {}
            }
        }
        if l.bytes < 0 || l.inodes < 0 {
            return Err(bad("no bytes= or inodes=".into()));
        }
        Ok(l)
    }

    /// Reads the figures of the home mounted at `home`; `Ok(None)` when
    /// `home` is not a hubfs home (no such attribute, or a filesystem
    /// without user attributes).
    pub fn read(home: &Path) -> Result<Option<LiveUsage>, LiveError> {
        let err = |source: std::io::Error| LiveError::Read {
            attr: XATTR_USAGE,
            path: home.display().to_string(),
            source,
        };
        let mut buf = vec![0u8; 512];
        match rustix::fs::getxattr(home, XATTR_USAGE, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                LiveUsage::parse(&String::from_utf8_lossy(&buf)).map(Some)
            }
            Err(e) if e == rustix::io::Errno::NODATA || e == rustix::io::Errno::OPNOTSUPP => {
                Ok(None)
            }
            Err(e) => Err(err(e.into())),
        }
    }

    /// Puts these figures into a record the controller decided on: bytes,
    /// inodes and the limits the home enforces replace the controller's, and
    /// the state is the controller's rule ([`crate::state::evaluate`]) applied
    /// to them — what the controller decides as soon as the report it was
    /// sent arrives, so "100 %" never comes with "All is well". What is
    /// enforced, the policy level and its clock stay the controller's. A
    /// home whose walk is still running has partial figures and changes
    /// nothing.
    pub fn apply_to(&self, rec: &mut QuotaRecord) -> bool {
        if !self.baseline {
            return false;
        }
        rec.actual_bytes = self.bytes;
        rec.actual_inodes = self.inodes;
        if self.quota_bytes > 0 {
            rec.quota_bytes = self.quota_bytes.min(i64::MAX as u64) as i64;
        }
        if self.quota_inodes > 0 {
            rec.quota_inodes = self.quota_inodes.min(i64::MAX as u64) as i64;
        }
        rec.fraction_used = if rec.quota_bytes > 0 {
            rec.actual_bytes as f64 / rec.quota_bytes as f64
        } else {
            0.0
        };
        rec.quota_state = crate::state::evaluate(rec);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Defaults;
    use crate::record::QuotaState;

    #[test]
    fn parses_what_the_home_layer_writes() {
        let l = LiveUsage::parse(
            "bytes=104857600 inodes=12 quota_bytes=104857600 quota_inodes=0 baseline=1 mode=cleanup zone=full",
        )
        .unwrap();
        assert_eq!(
            (l.bytes, l.inodes, l.quota_bytes),
            (100 << 20, 12, 100 << 20)
        );
        assert!(l.baseline && l.cleanup);
        assert_eq!(l.zone, "full");
        // An older home layer (no zone), and keys this one does not know.
        let l = LiveUsage::parse(
            "bytes=5 inodes=1 quota_bytes=0 quota_inodes=0 baseline=0 mode=normal future=x",
        )
        .unwrap();
        assert_eq!(
            (l.zone.as_str(), l.baseline, l.cleanup),
            ("under", false, false)
        );
    }

    #[test]
    fn nonsense_is_an_error_not_a_figure() {
        for text in [
            "",
            "bytes=x inodes=1",
            "inodes=3",
            "bytes=1 inodes=2 garbage",
        ] {
            assert!(LiveUsage::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn live_figures_replace_the_controllers_bytes_only_when_complete() {
        let mut rec = QuotaRecord::new("jmiller@stsci.edu", &Defaults::default());
        rec.actual_bytes = 10;
        let mut l = LiveUsage::parse("bytes=95 inodes=4 quota_bytes=100 quota_inodes=0 baseline=0")
            .unwrap();
        assert!(!l.apply_to(&mut rec));
        assert_eq!(rec.actual_bytes, 10, "a walk in progress is partial");
        l.baseline = true;
        assert!(l.apply_to(&mut rec));
        assert_eq!(
            (rec.actual_bytes, rec.quota_bytes, rec.actual_inodes),
            (95, 100, 4)
        );
        assert_eq!(
            rec.quota_state,
            QuotaState::NearingLimit,
            "the rule, on the live bytes"
        );
        // A record the controller could not trust stays in error.
        rec.error = Some("corrupt".into());
        rec.quota_state = QuotaState::Error;
        assert!(l.apply_to(&mut rec));
        assert_eq!(rec.quota_state, QuotaState::Error);
        assert!((rec.fraction_used - 0.95).abs() < 1e-9);
    }

    #[test]
    fn a_plain_directory_is_not_a_hubfs_home() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(LiveUsage::read(d.path()).unwrap(), None);
        assert!(LiveUsage::read(&d.path().join("missing")).is_err());
    }
}
