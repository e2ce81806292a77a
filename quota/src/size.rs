//! Byte sizes as people and Kubernetes write them.
//!
//! Quotas come from StorageClass parameters (`200Gi`), PVC capacities, CLI flags
//! (`--quota 100MiB`) and config files; one parser keeps them consistent.
//! Binary suffixes (`Ki`, `KiB`, ... `Ei`) are powers of 1024, decimal ones
//! (`k`, `KB`, `M`, `G`, `T`) powers of 1000, as in Kubernetes quantities.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 1073741824, 500MiB, 200Gi, 1.5T)")]
pub struct SizeError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses `123`, `1.5GiB`, `200Gi`, `10G`, `512k` into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "M" | "MB" => 1000u64.pow(2),
        "G" | "GB" => 1000u64.pow(3),
        "T" | "TB" => 1000u64.pow(4),
        "P" | "PB" => 1000u64.pow(5),
        "E" | "EB" => 1000u64.pow(6),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        "Pi" | "PiB" => 1 << 50,
        "Ei" | "EiB" => 1 << 60,
        _ => return Err(err("unknown unit")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| err("too large"));
    }
    let f: f64 = num.parse().map_err(|_| err("not a number"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(v.round() as u64)
}

/// Formats bytes the way users read them: `41.2 GiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if v.fract() == 0.0 {
        format!("{} {}", v as u64, UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_size("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_size("200Gi").unwrap(), 200 << 30);
        assert_eq!(parse_size("200GiB").unwrap(), 200 << 30);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_size(" 7 ").unwrap(), 7);
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "Gi",
            "-1",
            "1.2.3G",
            "12XB",
            "99999999999999999999",
            "20000Ei",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(200 << 30), "200 GiB");
        assert_eq!(format_size((41.2 * (1u64 << 30) as f64) as u64), "41.2 GiB");
    }
}
