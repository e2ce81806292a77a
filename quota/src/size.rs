//! Byte sizes as people and Kubernetes write them: the one size parser and
//! the one size formatter of hubfs.
//!
//! Quotas come from StorageClass parameters (`200Gi`), PVC capacities, CLI
//! flags (`--quota 100MiB`, `--max-memory 8Mi`) and config files; one parser
//! keeps them consistent. The units follow Kubernetes quantities:
//!
//! | written                                  | means                 |
//! |------------------------------------------|-----------------------|
//! | `123` (or `123B`)                        | 123 bytes             |
//! | `Ki` `Mi` `Gi` `Ti` `Pi` `Ei` (or `KiB` ...) | powers of 1024 (binary) |
//! | `k`/`K` `M` `G` `T` `P` `E` (or `kB`/`KB` `MB` ...) | powers of 1000 (decimal) |
//!
//! So `8Mi` is 8,388,608 bytes and `8M` is 8,000,000, as in a Kubernetes
//! resource request. A fraction is allowed (`1.5Gi`) and rounded to whole
//! bytes; one space may separate number and unit (`41.2 GiB`, what
//! [`format_size`] writes). Refused, with the reason: an empty string, a
//! sign (`-1`, `+1`), exponents (`1e3`), Kubernetes' milli (`8m`), bits
//! (`8Mb`), non-ASCII digits or units, and anything above `u64::MAX` bytes.
//!
//! [`format_size`] always writes binary units (`512 B`, `41.2 GiB`,
//! `200 GiB`), the way `du -h` and `df -h` read.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 1073741824, 500Mi, 200Gi, 1.5T; Ki/Mi/Gi are powers of 1024, k/M/G of 1000)")]
pub struct SizeError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses `123`, `1.5GiB`, `200Gi`, `10G`, `512k` into bytes (units in the
/// module doc).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.starts_with(['-', '+']) {
        return Err(err("a size has no sign"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let mult: u64 = match unit {
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
        "m" => {
            return Err(err(
                "\"m\" is milli in Kubernetes; write M (10^6) or Mi (2^20)",
            ))
        }
        _ => return Err(err("unknown unit")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| err("too large"));
    }
    if num.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, yet not a u64: too many of them.
        return Err(err("too large"));
    }
    let f: f64 = num.parse().map_err(|_| err("not a number"))?;
    let v = f * mult as f64;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(v.round() as u64)
}

/// Formats bytes the way users read them: `512 B`, `41.2 GiB`, `200 GiB`
/// (a value within 0.05 of a whole number of units is written whole).
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
    if (v - v.round()).abs() < 0.05 {
        format!("{:.0} {}", v.round(), UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_bytes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_size("7B").unwrap(), 7);
        assert_eq!(parse_size(" 7 ").unwrap(), 7);
        assert_eq!(parse_size(&u64::MAX.to_string()).unwrap(), u64::MAX);
    }

    #[test]
    fn binary_units_are_powers_of_1024() {
        assert_eq!(parse_size("1Ki").unwrap(), 1024);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("8Mi").unwrap(), 8 << 20);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("200Gi").unwrap(), 200 << 30);
        assert_eq!(parse_size("200GiB").unwrap(), 200 << 30);
        assert_eq!(parse_size("2Ti").unwrap(), 2 << 40);
        assert_eq!(parse_size("3TiB").unwrap(), 3 << 40);
        assert_eq!(parse_size("1Pi").unwrap(), 1 << 50);
        assert_eq!(parse_size("15Ei").unwrap(), 15 << 60);
        assert_eq!(parse_size("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_size(".5Gi").unwrap(), 1 << 29);
    }

    #[test]
    fn decimal_units_are_powers_of_1000_like_kubernetes() {
        assert_eq!(parse_size("512k").unwrap(), 512_000);
        assert_eq!(parse_size("512K").unwrap(), 512_000);
        assert_eq!(parse_size("512kB").unwrap(), 512_000);
        assert_eq!(parse_size("512KB").unwrap(), 512_000);
        assert_eq!(parse_size("8M").unwrap(), 8_000_000);
        assert_eq!(parse_size("8MB").unwrap(), 8_000_000);
        assert_eq!(parse_size("10G").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("1.5T").unwrap(), 1_500_000_000_000);
        assert_eq!(parse_size("2TB").unwrap(), 2_000_000_000_000);
        assert_eq!(parse_size("1P").unwrap(), 10u64.pow(15));
        assert_eq!(parse_size("18E").unwrap(), 18 * 10u64.pow(18));
    }

    #[test]
    fn one_space_before_the_unit_reads_what_format_size_writes() {
        assert_eq!(parse_size("8 M").unwrap(), 8_000_000);
        assert_eq!(parse_size("8 Mi").unwrap(), 8 << 20);
        assert_eq!(parse_size("200 GiB").unwrap(), 200 << 30);
        for b in [0, 512, 1 << 20, 200 << 30, 7 << 40] {
            assert_eq!(
                parse_size(&format_size(b)).unwrap(),
                b,
                "{}",
                format_size(b)
            );
        }
    }

    #[test]
    fn refuses_hostile_input_with_the_reason() {
        for (s, reason) in [
            ("", "empty"),
            ("   ", "empty"),
            ("Gi", "no number"),
            ("-1", "a size has no sign"),
            ("-5Gi", "a size has no sign"),
            ("+5", "a size has no sign"),
            ("1.2.3G", "not a number"),
            (".", "not a number"),
            ("12XB", "unknown unit"),
            ("8  M", "unknown unit"),
            ("8\tM", "unknown unit"),
            ("8 M B", "unknown unit"),
            ("1e3", "unknown unit"),
            ("8Mb", "unknown unit"),
            ("8mi", "unknown unit"),
            ("8gib", "unknown unit"),
            ("5\u{b5}B", "unknown unit"),
            ("5Gi\u{0}", "unknown unit"),
            (
                "8m",
                "\"m\" is milli in Kubernetes; write M (10^6) or Mi (2^20)",
            ),
            ("\u{ff18}M", "no number"),
            ("\u{661}\u{662}", "no number"),
            ("NaN", "no number"),
            ("inf", "no number"),
            ("99999999999999999999", "too large"),
            ("18446744073709551616", "too large"),
            ("16Ei", "too large"),
            ("20000Ei", "too large"),
            ("19E", "too large"),
            ("18446744073709551615k", "too large"),
            ("99999999999999999999.5", "too large"),
        ] {
            let e = parse_size(s).expect_err(s);
            assert_eq!(e.reason, reason, "{s:?}");
            assert_eq!(e.input, s);
            assert!(e.to_string().contains("Ki/Mi/Gi are powers of 1024"), "{e}");
        }
        let long = "9".repeat(300);
        assert_eq!(parse_size(&long).unwrap_err().reason, "too large");
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(200 << 30), "200 GiB");
        assert_eq!(format_size((41.2 * (1u64 << 30) as f64) as u64), "41.2 GiB");
        // Close to a whole number of units reads whole, not "200.0 GiB".
        assert_eq!(
            format_size((199.97 * (1u64 << 30) as f64) as u64),
            "200 GiB"
        );
        assert_eq!(format_size(u64::MAX), "16 EiB");
    }

    proptest::proptest! {
        #[test]
        fn any_byte_count_parses_back(n: u64) {
            proptest::prop_assert_eq!(parse_size(&n.to_string()).unwrap(), n);
            proptest::prop_assert_eq!(parse_size(&format!("{n}B")).unwrap(), n);
        }

        #[test]
        fn formatted_sizes_parse_back_within_five_percent(n in 1024u64..(1 << 62)) {
            let back = parse_size(&format_size(n)).unwrap() as f64;
            let err = (back - n as f64).abs() / n as f64;
            proptest::prop_assert!(err <= 0.05, "{n} -> {} -> {back}", format_size(n));
        }
    }
}
