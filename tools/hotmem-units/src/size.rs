//! Memory sizes: parsing (`512M`, `1G`, `2MiB`, `4096`) and formatting.
//!
//! Units are binary, as in QEMU: `K`, `M`, `G`, `T` (optionally followed by
//! `B` or `iB`, any case) mean 2^10, 2^20, 2^30 and 2^40 bytes.

use std::fmt;

/// Binary unit suffixes, largest first.
const UNITS: [(char, u64); 4] = [
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
];

/// A size string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 4096, 512M, 1G, 2MiB)")]
pub struct SizeError {
    /// The rejected input.
    pub input: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Parses a size in bytes: an integer with an optional binary unit suffix.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(err("expected a number"));
    }
    let number: u64 = digits.parse().map_err(|_| err("number too large"))?;
    let multiplier = unit_multiplier(unit.trim()).ok_or_else(|| err("unknown unit"))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| err("size too large"))
}

/// Parses a non-zero size of local memory (a mapping's length), in bytes.
pub fn parse_size_nonzero(input: &str) -> Result<usize, SizeError> {
    let err = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    match parse_size(input)? {
        0 => Err(err("must not be zero")),
        n => usize::try_from(n).map_err(|_| err("size too large")),
    }
}

/// The multiplier of a unit suffix (`""`, `B`, `K`, `KB`, `KiB`, ...).
fn unit_multiplier(unit: &str) -> Option<u64> {
    let upper = unit.to_ascii_uppercase();
    if upper.is_empty() || upper == "B" {
        return Some(1);
    }
    let mut chars = upper.chars();
    let letter = chars.next()?;
    let (_, multiplier) = UNITS.iter().find(|(c, _)| *c == letter)?;
    matches!(chars.as_str(), "" | "B" | "IB").then_some(*multiplier)
}

/// Formats `bytes` with QEMU's largest exact unit suffix: `1G`, `1536M`, `4097`.
pub fn qemu_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    UNITS
        .iter()
        .find(|(_, m)| bytes % m == 0)
        .map_or_else(|| bytes.to_string(), |(c, m)| format!("{}{c}", bytes / m))
}

/// Displays a byte count for humans: `1 GiB`, `1.50 GiB`, `512 MiB`, `100 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        let Some((c, m)) = UNITS.iter().find(|(_, m)| bytes >= *m) else {
            return write!(f, "{bytes} B");
        };
        if bytes % m == 0 {
            write!(f, "{} {c}iB", bytes / m)
        } else {
            // Precision loss is irrelevant for display.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / *m as f64;
            write!(f, "{value:.2} {c}iB")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed_sizes() {
        let cases = [
            ("4096", 4096),
            ("0", 0),
            ("512M", 512 << 20),
            ("1G", 1 << 30),
            ("1g", 1 << 30),
            ("2MiB", 2 << 20),
            ("2mib", 2 << 20),
            ("3KB", 3 << 10),
            ("1T", 1 << 40),
            ("64B", 64),
            (" 8 M ", 8 << 20),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        for input in [
            "",
            "M",
            "1.5G",
            "-1",
            "1X",
            "1GiBs",
            "1 Gb x",
            "99999999999999999999",
        ] {
            assert!(parse_size(input).is_err(), "{input} should be rejected");
        }
        assert_eq!(
            parse_size("20000000T").unwrap_err().reason,
            "size too large"
        );
    }

    #[test]
    fn local_sizes_are_not_zero() {
        assert_eq!(parse_size_nonzero("64M"), Ok(64 << 20));
        assert_eq!(
            parse_size_nonzero("0").unwrap_err().reason,
            "must not be zero"
        );
        assert!(parse_size_nonzero("12X").is_err());
    }

    #[test]
    fn formats_for_qemu() {
        assert_eq!(qemu_size(0), "0");
        assert_eq!(qemu_size(1 << 30), "1G");
        assert_eq!(qemu_size(5 << 30), "5G");
        assert_eq!(qemu_size(1536 << 20), "1536M");
        assert_eq!(qemu_size(2 << 20), "2M");
        assert_eq!(qemu_size(4097), "4097");
        for n in [1 << 20, 3 << 30, 4097, 12 << 10] {
            assert_eq!(parse_size(&qemu_size(n)), Ok(n));
        }
    }

    #[test]
    fn formats_for_humans() {
        assert_eq!(HumanSize(1 << 30).to_string(), "1 GiB");
        assert_eq!(HumanSize(1536 << 20).to_string(), "1.50 GiB");
        assert_eq!(HumanSize(512 << 20).to_string(), "512 MiB");
        assert_eq!(HumanSize(100).to_string(), "100 B");
    }
}
