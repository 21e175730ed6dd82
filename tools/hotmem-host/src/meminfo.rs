//! Parsing `/proc/meminfo`.

use std::collections::BTreeMap;

/// A `/proc/meminfo` line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparsable /proc/meminfo line {line:?}")]
pub struct MeminfoError {
    /// The offending line.
    pub line: String,
}

/// Parses `/proc/meminfo` into key -> value. Values are as printed: kB for
/// the lines with a `kB` unit, plain counts (e.g. `HugePages_Total`) otherwise.
pub fn parse_meminfo(text: &str) -> Result<BTreeMap<String, u64>, MeminfoError> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Result<(String, u64), MeminfoError> {
    let err = || MeminfoError {
        line: line.to_owned(),
    };
    let (key, rest) = line.split_once(':').ok_or_else(err)?;
    let mut fields = rest.split_whitespace();
    let value = fields.next().and_then(|v| v.parse().ok()).ok_or_else(err)?;
    match (fields.next(), fields.next()) {
        (None | Some("kB"), None) => Ok((key.trim().to_owned(), value)),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "MemTotal:        1004096 kB\n\
        MemFree:          948512 kB\n\
        HugePages_Total:       0\n\
        Hugepagesize:       2048 kB\n";

    #[test]
    fn parses_kb_and_counts() {
        let m = parse_meminfo(SAMPLE).unwrap();
        assert_eq!(m["MemTotal"], 1_004_096);
        assert_eq!(m["MemFree"], 948_512);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "MemTotal 5 kB",
            "MemTotal: lots kB",
            "MemTotal: 5 MB",
            "MemTotal:",
        ] {
            assert!(parse_meminfo(bad).is_err(), "{bad}");
        }
    }
}
