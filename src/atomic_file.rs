//! Files that must come through a power cut whole: picamd's own state files (today the
//! self-signed certificate and its key in `state_dir`, see [`crate::tls`]).
//!
//! A write never touches the file in place. [`write_set`] first keeps the current
//! generation of every file of the set as `NAME.previous`, then writes each new file through
//! a temporary one in the same directory (create, write, `fsync`, `rename` over the name,
//! `fsync` of the directory). A cut at any moment leaves, for the set as a whole, either the
//! current generation whole or the previous one whole. [`read_set`] reads the current
//! generation, has the caller validate it (parse, check a key against its certificate), and
//! falls back to the previous generation when the current one is broken, saying why.
//!
//! The shape is the one docs/read-only-root.md describes for the SD image's persistent
//! settings. Nothing here knows file formats; that is the caller's validation.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Suffix of the previous generation of a file: `tls-key.pem` → `tls-key.pem.previous`.
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// The previous generation's path of `path`.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(PREVIOUS_SUFFIX);
    PathBuf::from(p)
}

/// One file of a set to write: where, what, and its permission bits.
#[derive(Debug, Clone, Copy)]
pub struct NewFile<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    /// Permission bits of the new file (e.g. `0o600` for a private key).
    pub mode: u32,
}

/// A write that failed, with the file it was writing.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Replaces a set of files so that a power cut leaves either the old set or the new one
/// whole: every current file is first copied to its `.previous` (all of them before any new
/// file is written), then each new file goes through [`write_one`]. Files that do not exist
/// yet have no previous generation. When the current set is incomplete (some files missing)
/// the previous generation is left as it is: an incomplete set would replace a whole one.
pub fn write_set(files: &[NewFile<'_>]) -> Result<(), WriteError> {
    let current: Vec<Option<Vec<u8>>> = files
        .iter()
        .map(|f| match std::fs::read(f.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(WriteError {
                path: f.path.to_owned(),
                source,
            }),
        })
        .collect::<Result<_, _>>()?;
    if current.iter().all(Option::is_some) {
        for (f, old) in files.iter().zip(&current) {
            let old = old.as_deref().expect("checked: every current file exists");
            write_one(&previous_path(f.path), old, f.mode)?;
        }
    }
    for f in files {
        write_one(f.path, f.bytes, f.mode)?;
    }
    Ok(())
}

/// Writes one file atomically: a temporary file beside it (`NAME.tmp-<pid>`, created with
/// `mode`), `fsync`, `rename` over `path`, then `fsync` of the directory so the new name
/// itself survives a cut. On an error the temporary file is removed and `path` is as before.
pub fn write_one(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A temporary file a crash left behind under the same name (same pid after a reboot).
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Which generation [`read_set`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    Current,
    /// The `.previous` files: the current ones were broken.
    Previous,
}

/// A set read back and accepted by the caller's validation.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    pub generation: Generation,
    /// Why the current generation was refused, when the previous one is returned.
    pub current_refused: Option<String>,
}

/// Why no generation of a set could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Neither generation exists (a first start).
    #[error("missing")]
    Missing,
    /// The current generation is broken and the previous one is missing or broken too.
    #[error("{current}; previous generation: {previous}")]
    Broken { current: String, previous: String },
}

/// Reads the set `paths` (current generation), validates it with `validate`, and falls back
/// to the `.previous` files when the current set is broken: a file missing while others
/// exist, unreadable, or refused by `validate` (its message is the reason). A set none of
/// whose current files exists is [`ReadError::Missing`] when it has no previous generation
/// either.
pub fn read_set<T>(
    paths: &[&Path],
    validate: impl Fn(&[Vec<u8>]) -> Result<T, String>,
) -> Result<Loaded<T>, ReadError> {
    let current = match read_generation(paths, &validate) {
        Ok(value) => {
            return Ok(Loaded {
                value,
                generation: Generation::Current,
                current_refused: None,
            })
        }
        Err(e) => e,
    };
    let previous: Vec<PathBuf> = paths.iter().map(|p| previous_path(p)).collect();
    let previous: Vec<&Path> = previous.iter().map(PathBuf::as_path).collect();
    match (current, read_generation(&previous, &validate)) {
        (current, Ok(value)) => Ok(Loaded {
            value,
            generation: Generation::Previous,
            current_refused: Some(current.unwrap_or_else(|| "missing".to_owned())),
        }),
        (None, Err(None)) => Err(ReadError::Missing),
        (current, Err(previous)) => Err(ReadError::Broken {
            current: current.unwrap_or_else(|| "missing".to_owned()),
            previous: previous.unwrap_or_else(|| "missing".to_owned()),
        }),
    }
}

/// One generation: `Err(None)` when none of its files exists, `Err(Some(why))` when it is
/// broken.
fn read_generation<T>(
    paths: &[&Path],
    validate: &impl Fn(&[Vec<u8>]) -> Result<T, String>,
) -> Result<T, Option<String>> {
    let mut contents = Vec::with_capacity(paths.len());
    let mut missing = Vec::new();
    for p in paths {
        match std::fs::read(p) {
            Ok(b) => contents.push(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(p.display()),
            Err(e) => return Err(Some(format!("{}: {e}", p.display()))),
        }
    }
    if missing.len() == paths.len() {
        return Err(None);
    }
    if let Some(m) = missing.first() {
        return Err(Some(format!("{m} is missing")));
    }
    validate(&contents).map_err(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("picamd-atomic-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).expect("a temporary directory");
        TempDir(d)
    }

    /// Accepts a set whose files all hold the same text, like a key and the certificate
    /// made with it.
    fn same(files: &[Vec<u8>]) -> Result<String, String> {
        let first = String::from_utf8(files[0].clone()).map_err(|e| e.to_string())?;
        if first.is_empty() {
            return Err("empty".to_owned());
        }
        match files.iter().all(|f| *f == files[0]) {
            true => Ok(first),
            false => Err("the files do not match".to_owned()),
        }
    }

    fn write_pair(a: &Path, b: &Path, text: &str) {
        let t = text.as_bytes();
        write_set(&[
            NewFile {
                path: a,
                bytes: t,
                mode: 0o600,
            },
            NewFile {
                path: b,
                bytes: t,
                mode: 0o644,
            },
        ])
        .expect("write_set");
    }

    #[test]
    fn write_keeps_the_previous_generation_and_the_modes() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir();
        let (a, b) = (d.path().join("key"), d.path().join("cert"));
        write_pair(&a, &b, "one");
        assert!(
            !previous_path(&a).exists(),
            "a first write has no previous generation"
        );
        write_pair(&a, &b, "two");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(previous_path(&a)).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(previous_path(&b)).unwrap(), "one");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a), 0o600);
        assert_eq!(mode(&previous_path(&a)), 0o600);
        assert_eq!(mode(&b), 0o644);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn read_uses_the_current_generation_when_it_is_valid() {
        let d = dir();
        let (a, b) = (d.path().join("key"), d.path().join("cert"));
        write_pair(&a, &b, "one");
        write_pair(&a, &b, "two");
        let l = read_set(&[&a, &b], same).unwrap();
        assert_eq!(
            (l.value.as_str(), l.generation),
            ("two", Generation::Current)
        );
        assert_eq!(l.current_refused, None);
    }

    #[test]
    fn a_cut_between_the_files_of_a_set_falls_back_to_the_previous_set() {
        let d = dir();
        let (a, b) = (d.path().join("key"), d.path().join("cert"));
        write_pair(&a, &b, "one");
        // What a cut after the first new file and before the second leaves: the previous
        // generation already whole ("one"), the current one mixed.
        write_one(&previous_path(&a), b"one", 0o600).unwrap();
        write_one(&previous_path(&b), b"one", 0o644).unwrap();
        write_one(&a, b"two", 0o600).unwrap();
        let l = read_set(&[&a, &b], same).unwrap();
        assert_eq!(
            (l.value.as_str(), l.generation),
            ("one", Generation::Previous)
        );
        assert_eq!(l.current_refused.as_deref(), Some("the files do not match"));
    }

    #[test]
    fn a_broken_or_missing_current_file_falls_back_with_the_reason() {
        let d = dir();
        let (a, b) = (d.path().join("key"), d.path().join("cert"));
        write_pair(&a, &b, "one");
        write_pair(&a, &b, "two");
        std::fs::write(&b, b"").unwrap(); // truncated, as a cut mid-write would leave it
        let l = read_set(&[&a, &b], same).unwrap();
        assert_eq!(l.generation, Generation::Previous);
        assert_eq!(l.value, "one");
        std::fs::remove_file(&b).unwrap();
        let l = read_set(&[&a, &b], same).unwrap();
        assert_eq!(l.generation, Generation::Previous);
        let why = l.current_refused.unwrap();
        assert!(why.ends_with("cert is missing"), "{why}");
    }

    #[test]
    fn nothing_at_all_is_missing_and_both_broken_says_both_reasons() {
        let d = dir();
        let (a, b) = (d.path().join("key"), d.path().join("cert"));
        assert_eq!(read_set(&[&a, &b], same).unwrap_err(), ReadError::Missing);
        write_pair(&a, &b, "one");
        write_pair(&a, &b, "two");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(previous_path(&b), b"").unwrap();
        let e = read_set(&[&a, &b], same).unwrap_err();
        assert_eq!(
            e,
            ReadError::Broken {
                current: "the files do not match".to_owned(),
                previous: "the files do not match".to_owned(),
            }
        );
    }

    #[test]
    fn an_incomplete_current_set_does_not_replace_a_whole_previous_one() {
        let d = dir();
        let (a, b) = (d.path().join("key"), d.path().join("cert"));
        write_pair(&a, &b, "one");
        write_pair(&a, &b, "two");
        std::fs::remove_file(&b).unwrap();
        write_pair(&a, &b, "three");
        assert_eq!(std::fs::read_to_string(previous_path(&a)).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(previous_path(&b)).unwrap(), "one");
    }

    #[test]
    fn a_failed_write_leaves_the_file_and_no_temporary() {
        let d = dir();
        let a = d.path().join("key");
        write_one(&a, b"one", 0o600).unwrap();
        // A directory where the file's name should go: the rename fails.
        let blocked = d.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"").unwrap();
        assert!(write_one(&blocked, b"two", 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "one");
        let tmps = std::fs::read_dir(d.path())
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().contains(".tmp-")
            })
            .count();
        assert_eq!(tmps, 0);
    }
}
