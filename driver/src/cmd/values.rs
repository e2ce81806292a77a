//! Parsers for command-line values that several subcommands take, so that
//! `--walk-timeout 1.5` or `--threads 0` means (and is refused) the same
//! everywhere.

use std::time::Duration;

/// A positive, finite number of seconds (fractions allowed).
pub fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

/// A thread count from 1 to `MAX`.
pub fn threads<const MAX: usize>(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX).contains(n))
        .ok_or_else(|| format!("{s:?} is not a thread count from 1 to {MAX}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_count_is_bounded_by_its_maximum() {
        assert_eq!(threads::<64>("64").unwrap(), 64);
        assert!(threads::<64>("65").is_err());
        assert!(threads::<64>("0").is_err());
    }
}
