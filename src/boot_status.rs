//! The boot status file: which persisted settings files the SD image's boot scripts used,
//! or fell back to their previous copy, and why (docs/read-only-root.md, section 2).
//!
//! The scripts write it before picamd starts (`boot_status`, by default
//! `/run/picamd/boot-status.tsv`); picamd reads it once at start-up and shows it in `/state`
//! as `persist`, together with its own TLS pair when that fell back ([`crate::tls`]).
//! Nothing in it can stop picamd: a bad line is skipped with a warning, a missing file is an
//! empty list. Writing it, and the settings files themselves, belong to the image's scripts.
//!
//! The format is kept trivial for shell scripts: one line per file, three TAB-separated
//! fields `FILE<TAB>USED<TAB>REASON`, USED one of `current`, `previous`, `missing`,
//! `default`, REASON free text (may be empty). Lines starting with `#` and blank lines are
//! ignored.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Most bytes read: far more than the few dozen lines the scripts write, small enough that a
/// runaway writer cannot cost picamd memory.
pub const MAX_BYTES: usize = 64 * 1024;

/// Which generation of a persisted file was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Used {
    /// The file as last written.
    Current,
    /// Its previous copy: the current one was broken (the reason says how).
    Previous,
    /// Neither copy was usable or there was none; whatever needs it makes a new one.
    Missing,
    /// Built-in defaults instead of the file.
    Default,
}

impl Used {
    /// What a log line says about a file used this way.
    fn describe(self) -> &'static str {
        match self {
            Used::Current => "used as written",
            Used::Previous => "used the previous copy",
            Used::Missing => "missing",
            Used::Default => "used the defaults",
        }
    }
}

impl std::str::FromStr for Used {
    type Err = LineError;

    fn from_str(s: &str) -> Result<Used, LineError> {
        match s {
            "current" => Ok(Used::Current),
            "previous" => Ok(Used::Previous),
            "missing" => Ok(Used::Missing),
            "default" => Ok(Used::Default),
            other => Err(LineError::UnknownUsed(other.to_owned())),
        }
    }
}

/// One persisted file and which generation of it was used: an entry of `/state`'s `persist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersistedFile {
    /// The file, as the writer named it (a path, or a name on the boot partition).
    pub file: String,
    pub used: Used,
    /// Why it was not used as written; may be empty.
    pub reason: String,
}

/// Why a line of the file was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("{0} TAB-separated field(s); FILE<TAB>USED<TAB>REASON has 3")]
    FieldCount(usize),
    #[error("USED is {0:?}; it is one of current, previous, missing, default")]
    UnknownUsed(String),
    #[error("FILE is empty")]
    EmptyFile,
}

/// A line that was skipped, by its number (from 1) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub error: LineError,
}

/// What the file said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootStatus {
    /// The well-formed lines, in the file's order.
    pub files: Vec<PersistedFile>,
    pub skipped: Vec<Skipped>,
    /// The file was larger than [`MAX_BYTES`]; only the whole lines within them were read.
    pub truncated: bool,
}

/// The file could not be read (anything but its absence, which is normal).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Parses the file's text. Never fails: a bad line is skipped and listed.
pub fn parse(text: &str) -> BootStatus {
    let mut status = BootStatus::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(file) => status.files.push(file),
            Err(error) => status.skipped.push(Skipped { line: i + 1, error }),
        }
    }
    status
}

fn parse_line(line: &str) -> Result<PersistedFile, LineError> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [file, used, reason] = fields[..] else {
        return Err(LineError::FieldCount(fields.len()));
    };
    if file.is_empty() {
        return Err(LineError::EmptyFile);
    }
    Ok(PersistedFile {
        file: file.to_owned(),
        used: used.parse()?,
        reason: reason.to_owned(),
    })
}

/// Reads and parses the file: at most [`MAX_BYTES`], bytes that are not UTF-8 replaced. A
/// missing file is an empty status.
pub fn read(path: &Path) -> Result<BootStatus, ReadError> {
    let err = |source| ReadError {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BootStatus::default()),
        Err(e) => return Err(err(e)),
    };
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file of exactly MAX_BYTES from a larger one.
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    let truncated = bytes.len() > MAX_BYTES;
    if truncated {
        bytes.truncate(MAX_BYTES);
        // The cut falls inside a line: keep only whole lines, so a half line is not taken
        // for an entry with a shortened reason.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(whole);
    }
    Ok(BootStatus {
        truncated,
        ..parse(&String::from_utf8_lossy(&bytes))
    })
}

/// [`read`] for start-up: every problem, and every file not used as written, is logged once
/// as a warning; the result is the list for `/state` (empty when the file cannot be read).
pub fn load(path: &Path) -> Vec<PersistedFile> {
    let status = match read(path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("boot status: {e}");
            return Vec::new();
        }
    };
    if status.truncated {
        tracing::warn!(
            path = %path.display(),
            "boot status: the file is larger than {MAX_BYTES} bytes; only its start was read"
        );
    }
    for s in &status.skipped {
        tracing::warn!(
            path = %path.display(),
            "boot status: line {} skipped: {}",
            s.line,
            s.error
        );
    }
    for f in status.files.iter().filter(|f| f.used != Used::Current) {
        tracing::warn!(
            "persisted file {}: {}: {}",
            f.file,
            f.used.describe(),
            f.reason
        );
    }
    status.files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, used: Used, reason: &str) -> PersistedFile {
        PersistedFile {
            file: file.into(),
            used,
            reason: reason.into(),
        }
    }

    /// A file in a fresh directory, removed with it at the end of the test.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("picamd-boot-status-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, bytes: &[u8]) -> PathBuf {
            let path = self.0.join("boot-status.tsv");
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn good_lines_are_read_in_order() {
        let s = parse(
            "picamd.toml\tprevious\tsha256 mismatch\n\
             ssh_host_ed25519_key\tcurrent\t\n\
             wpa_supplicant-wlan0.conf\tmissing\tboth copies broken\n\
             hostname\tdefault\tno file\n",
        );
        assert_eq!(
            s.files,
            [
                entry("picamd.toml", Used::Previous, "sha256 mismatch"),
                entry("ssh_host_ed25519_key", Used::Current, ""),
                entry(
                    "wpa_supplicant-wlan0.conf",
                    Used::Missing,
                    "both copies broken"
                ),
                entry("hostname", Used::Default, "no file"),
            ]
        );
        assert!(s.skipped.is_empty() && !s.truncated);
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let s = parse("# written by picamd-persist restore\n\n   \na\tcurrent\t\n#b\tnope\n");
        assert_eq!(s.files, [entry("a", Used::Current, "")]);
        assert!(s.skipped.is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped_and_the_rest_kept() {
        let s = parse(
            "a\tprevious\tcut during save\n\
             only two\tcurrent\n\
             b\tcurrent\tx\textra\n\
             \tcurrent\tno name\n\
             spaces not tabs current reason\n\
             c\tcurrent\t\n",
        );
        assert_eq!(
            s.files,
            [
                entry("a", Used::Previous, "cut during save"),
                entry("c", Used::Current, "")
            ]
        );
        assert_eq!(
            s.skipped,
            [
                Skipped {
                    line: 2,
                    error: LineError::FieldCount(2)
                },
                Skipped {
                    line: 3,
                    error: LineError::FieldCount(4)
                },
                Skipped {
                    line: 4,
                    error: LineError::EmptyFile
                },
                Skipped {
                    line: 5,
                    error: LineError::FieldCount(1)
                },
            ]
        );
    }

    #[test]
    fn an_unknown_used_skips_the_line() {
        let s = parse("a\tPrevious\tx\nb\tfallback\t\nc\tdefault\t\n");
        assert_eq!(s.files, [entry("c", Used::Default, "")]);
        let errors: Vec<String> = s.skipped.iter().map(|k| k.error.to_string()).collect();
        assert_eq!(s.skipped.len(), 2);
        assert!(errors[0].contains("\"Previous\""), "{errors:?}");
        assert!(errors[1].contains("\"fallback\""), "{errors:?}");
    }

    #[test]
    fn a_file_over_64_kib_is_read_up_to_its_last_whole_line_there() {
        let dir = Scratch::new("large");
        let line = "picamd-state/x.pstore\tcurrent\tpadding padding padding\n";
        let mut text = String::from("first\tprevious\tbroken\n");
        while text.len() <= MAX_BYTES + line.len() {
            text.push_str(line);
        }
        let s = read(&dir.file(text.as_bytes())).unwrap();
        assert!(s.truncated);
        assert!(s.skipped.is_empty(), "no half line: {:?}", s.skipped);
        assert_eq!(s.files[0], entry("first", Used::Previous, "broken"));
        let kept = (MAX_BYTES - "first\tprevious\tbroken\n".len()) / line.len();
        assert_eq!(s.files.len(), 1 + kept);

        // Exactly MAX_BYTES is not truncated.
        let mut exact = text.into_bytes();
        exact.truncate(MAX_BYTES - 1);
        exact.push(b'\n');
        assert!(!read(&dir.file(&exact)).unwrap().truncated);
    }

    #[test]
    fn a_missing_file_is_an_empty_status() {
        let dir = Scratch::new("missing");
        let path = dir.0.join("not-there.tsv");
        assert_eq!(read(&path).unwrap(), BootStatus::default());
        assert!(load(&path).is_empty());
        // Any other failure is an error (here: a directory), and `load` makes it empty.
        assert!(read(&dir.0).is_err());
        assert!(load(&dir.0).is_empty());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced() {
        let dir = Scratch::new("latin1");
        let path = dir.file(b"caf\xe9.toml\tprevious\tbad \xff byte\nok\tcurrent\t\n");
        assert_eq!(
            load(&path),
            [
                entry("caf\u{fffd}.toml", Used::Previous, "bad \u{fffd} byte"),
                entry("ok", Used::Current, ""),
            ]
        );
    }
}
