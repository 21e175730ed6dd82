//! Reading the end of log files (guest console, QEMU log) for diagnostics.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the end of a file to look at for the last lines.
const TAIL_WINDOW: u64 = 256 * 1024;

/// Returns the last `lines` lines of `text`.
pub fn tail_lines(text: &str, lines: usize) -> &str {
    let trimmed = text.trim_end_matches('\n');
    if lines == 0 {
        return "";
    }
    let start = trimmed
        .rmatch_indices('\n')
        .nth(lines - 1)
        .map_or(0, |(i, _)| i + 1);
    &trimmed[start..]
}

/// Returns the last `lines` lines of the file at `path` (lossy UTF-8).
pub fn tail_file(path: &Path, lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_WINDOW)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // Serial consoles emit CRLF; drop the CRs for readability.
    let text = text.replace('\r', "");
    Ok(tail_lines(&text, lines).to_owned())
}

/// A titled excerpt of the last `lines` lines of `path`, or a note saying
/// why it is unavailable. Used in error messages.
pub fn excerpt(path: &Path, lines: usize) -> String {
    match tail_file(path, lines) {
        Ok(tail) if tail.is_empty() => format!("--- {} is empty ---", path.display()),
        Ok(tail) => format!(
            "--- last {lines} lines of {} ---\n{tail}\n--- end of {} ---",
            path.display(),
            path.display()
        ),
        Err(e) => format!("--- {} unavailable: {e} ---", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_text() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(tail_lines("a\nb\nc", 1), "c");
        assert_eq!(tail_lines("", 3), "");
        assert_eq!(tail_lines("a\n", 0), "");
    }

    #[test]
    fn tails_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let text: String = (0..100_000).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail_file(&path, 2).unwrap(), "line 99998\nline 99999");
        let ex = excerpt(&path, 1);
        assert!(
            ex.contains("last 1 lines") && ex.contains("line 99999"),
            "{ex}"
        );
        assert!(excerpt(&dir.path().join("missing"), 1).contains("unavailable"));
    }
}
