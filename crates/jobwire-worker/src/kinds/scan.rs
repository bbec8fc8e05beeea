//! `scan`: walk a directory and, for each file, hash it with BLAKE3 and
//! count its bytes and lines, reporting `file_processing` and
//! `file_completed` per file. A file that cannot be read (or is not a
//! regular file, or is a symlink loop) is a per-file `error` event, not a
//! job failure. The job's result is a manifest summary: counts, totals and a
//! digest over every file's path and hash.
//!
//! Confinement (docs/operations.md, "Security"): a scan reads only inside
//! its root (`JOBWIRE_SCAN_ROOT`; `jobwire dev` uses the current directory).
//! Without a root, `scan` jobs fail at once. Job paths resolve against the
//! root; a path that is missing and one that lies outside it get the same
//! answer, so a job cannot probe what exists elsewhere. Symlinks are
//! followed only while they stay inside: a link to a directory outside is
//! not entered, a link to a file outside is not read, and either is one
//! per-file `error` named by the link (inside the root), never by its
//! target.
//!
//! Bounds: the walk visits at most `max_entries` entries and `max_depth`
//! levels (the job fails with a message saying which), it checks between
//! entries whether the job must stop (cancel, shutdown), and while it walks
//! it reports how far it got twice a second — which is also how it learns
//! of a cancel, since a worker hears of one in the answer to a publish.
//!
//! The walk and the hashing are blocking file-system work, done on blocking
//! threads that hand their findings to the async side, which reports them.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jobwire_core::kinds::ScanParams;
use serde_json::json;
use tokio::sync::mpsc;
use walkdir::WalkDir;

use crate::handler::{Handler, JobContext, JobError, JobOutcome};
use crate::reporter::Reporter;

/// How much one scan may walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanLimits {
    /// Entries (files, directories, links) visited, matching the glob or
    /// not: bounds both the time and the memory a scan takes.
    pub max_entries: u64,
    /// Directory levels below the scanned directory.
    pub max_depth: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_entries: 200_000,
            max_depth: 64,
        }
    }
}

/// How often a walk reports how far it got.
const WALK_REPORT_EVERY: Duration = Duration::from_millis(500);

/// The `scan` handler.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// Only directories under it may be scanned; `None` disables `scan`.
    root: Option<PathBuf>,
    limits: ScanLimits,
}

impl Scan {
    /// A scanner confined to `root` (relative job paths resolve against
    /// it). With `None` every scan job fails: a worker without a root must
    /// not read whatever files it can.
    pub fn new(root: Option<PathBuf>) -> Scan {
        Scan {
            root,
            limits: ScanLimits::default(),
        }
    }

    /// The same scanner with other limits.
    pub fn with_limits(mut self, limits: ScanLimits) -> Scan {
        self.limits = limits;
        self
    }

    /// The directory a job asks for, inside the root, and the root, both
    /// canonical.
    fn resolve(&self, path: &str) -> Result<(PathBuf, PathBuf), JobError> {
        let Some(root) = &self.root else {
            return Err(JobError::msg(
                "scan is disabled on this worker: it has no scan root (set JOBWIRE_SCAN_ROOT to the directory scans may read)",
            ));
        };
        let root = root.canonicalize().map_err(|e| {
            JobError::msg(format!("the scan root {} is unusable: {e}", root.display()))
        })?;
        // Missing, outside the root, or not a directory: one answer.
        let refused = || {
            JobError::msg(format!(
                "no directory {path:?} under the scan root {}",
                root.display()
            ))
        };
        let dir = root.join(path).canonicalize().map_err(|_| refused())?;
        if !dir.starts_with(&root) || !dir.is_dir() {
            return Err(refused());
        }
        Ok((dir, root))
    }
}

#[async_trait]
impl Handler for Scan {
    async fn run(&self, job: JobContext) -> Result<JobOutcome, JobError> {
        let params = ScanParams::parse(job.params()).map_err(JobError::msg)?;
        let (dir, root) = self.resolve(&params.path)?;
        let pattern = params.glob.as_deref().map(Glob::new).transpose()?;
        let reporter = job.reporter();

        let visited = Arc::new(AtomicU64::new(0));
        let walk = {
            let (dir, reporter, visited) = (dir.clone(), reporter.clone(), Arc::clone(&visited));
            let limits = self.limits;
            tokio::task::spawn_blocking(move || {
                find(&dir, &root, pattern.as_ref(), limits, &reporter, &visited)
            })
        };
        tokio::pin!(walk);
        let mut tick = tokio::time::interval(WALK_REPORT_EVERY);
        tick.tick().await;
        let found = loop {
            tokio::select! {
                found = &mut walk => {
                    break found.map_err(|e| JobError::msg(format!("the directory walk crashed: {e}")))?;
                }
                _ = tick.tick() => {
                    let n = visited.load(Ordering::Relaxed);
                    // Also how a cancel reaches the walk: the answer to
                    // this publish carries it, and the walker checks.
                    reporter.progress(0, 0, &format!("walking: {n} entries so far")).await?;
                }
            }
        };
        reporter.check()?;
        let found = found.map_err(JobError::msg)?;
        let total = found.len() as u64;
        reporter
            .total_files(total, &format!("found {total} files"))
            .await?;

        let (tx, mut rx) = mpsc::channel(1024);
        let hashing = {
            let reporter = reporter.clone();
            let root = self.resolve(&params.path)?.1;
            tokio::task::spawn_blocking(move || hash_all(found, &root, &tx, &reporter))
        };
        let mut summary = Summary::default();
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Processing(rel) => reporter.file_processing(&rel).await?,
                Msg::Done(rel, Ok(file)) => {
                    summary.add(&rel, &file);
                    let details = json!({
                        "blake3": file.hash.to_hex().as_str(),
                        "bytes": file.bytes,
                        "lines": file.lines,
                    });
                    reporter.file_completed(&rel, details).await?;
                }
                Msg::Done(rel, Err(message)) => {
                    summary.failed += 1;
                    reporter.file_error(&rel, message).await?;
                }
            }
        }
        hashing
            .await
            .map_err(|e| JobError::msg(format!("hashing crashed: {e}")))?;
        reporter.check()?;

        let message = format!(
            "{} files, {} bytes, {} lines; {} failed",
            summary.files, summary.bytes, summary.lines, summary.failed
        );
        Ok(JobOutcome::with_result(json!({
            "path": dir.to_string_lossy(),
            "glob": params.glob,
            "hash": "blake3",
            "files": summary.files,
            "failed": summary.failed,
            "bytes": summary.bytes,
            "lines": summary.lines,
            "manifest_digest": summary.digest.finalize().to_hex().as_str(),
        }))
        .message(message))
    }
}

/// One entry to report on: a file to hash, or one that cannot be.
enum Found {
    File { rel: String, path: PathBuf },
    Broken { rel: String, message: String },
}

/// A scan's `glob`, matched against paths relative to the scanned
/// directory (`*` stays within one directory, `**` spans any number).
struct Glob {
    pattern: glob::Pattern,
    /// The pattern's parts between slashes, for [`Glob::may_match_below`]
    /// (`None`: a part that is no pattern alone, such as half of a `[/]`
    /// class, and so may match any name).
    parts: Vec<Option<glob::Pattern>>,
}

const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Glob {
    fn new(text: &str) -> Result<Glob, JobError> {
        let bad = |e: glob::PatternError| JobError::msg(format!("glob {text:?}: {e}"));
        Ok(Glob {
            pattern: glob::Pattern::new(text).map_err(bad)?,
            parts: text
                .split('/')
                .map(|part| glob::Pattern::new(part).ok())
                .collect(),
        })
    }

    fn matches(&self, rel: &str) -> bool {
        self.pattern.matches_with(rel, GLOB_OPTIONS)
    }

    /// Whether some path below the directory `rel` could match: its
    /// components match the pattern's leading parts, and the pattern goes
    /// deeper (or reaches a `**`, which matches at any depth).
    fn may_match_below(&self, rel: &str) -> bool {
        // The scanned directory itself ("") holds everything that matches.
        let mut dirs = rel.split('/').filter(|d| !d.is_empty());
        for part in &self.parts {
            let Some(part) = part else {
                // No pattern alone: any name may be part of a match.
                if dirs.next().is_none() {
                    return true;
                }
                continue;
            };
            if part.as_str() == "**" {
                return true;
            }
            match dirs.next() {
                Some(dir) if part.matches_with(dir, GLOB_OPTIONS) => {}
                Some(_) => return false,
                None => return true,
            }
        }
        false
    }

    /// Whether a failed entry is reported: a file (or a link to one) when
    /// it matches; a directory that could not be entered, or an entry whose
    /// type cannot be read (`is_dir` `None`), when it or what it could hold
    /// matches. So `**/*.rs` does not count a link to a program outside
    /// the root among its failures.
    fn reports(glob: Option<&Glob>, rel: &str, is_dir: Option<bool>) -> bool {
        glob.is_none_or(|g| g.matches(rel) || (is_dir != Some(false) && g.may_match_below(rel)))
    }
}

/// Walks `dir` in a stable order (by name), following symlinks that stay
/// inside `root`; keeps the files matching `pattern` (relative to `dir`),
/// and the failures a match could be among.
/// Counts visited entries in `visited`; stops (with what it found) when the
/// job must stop.
///
/// # Errors
/// A message when the tree exceeds the limits.
fn find(
    dir: &Path,
    root: &Path,
    pattern: Option<&Glob>,
    limits: ScanLimits,
    reporter: &Reporter,
    visited: &AtomicU64,
) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    let relative = |p: &Path| {
        p.strip_prefix(dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let inside = |p: &Path| p.canonicalize().is_ok_and(|real| real.starts_with(root));
    // Links that lead out of the root, met by the filter (which cannot
    // yield them itself); reported in walk order, by the link's name.
    let outside: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let walk = WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .max_depth(limits.max_depth + 1)
        .into_iter()
        .filter_entry(|entry| {
            // A link whose target exists outside the root. (A dangling
            // link passes: the walk reports it as the error it is.)
            if entry.path_is_symlink() && !inside(entry.path()) && entry.path().exists() {
                let rel = relative(entry.path());
                if Glob::reports(pattern, &rel, Some(entry.path().is_dir())) {
                    outside.borrow_mut().push(rel);
                }
                return false;
            }
            true
        });
    for entry in walk {
        for rel in outside.borrow_mut().drain(..) {
            found.push(Found::Broken {
                rel,
                message: "a link to outside the scan root (not followed)".to_owned(),
            });
        }
        if reporter.is_stopped() {
            break;
        }
        let n = visited.fetch_add(1, Ordering::Relaxed) + 1;
        if n > limits.max_entries {
            return Err(format!(
                "more than {} entries under the scanned directory: scan a smaller part of it, or narrow the glob",
                limits.max_entries
            ));
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let rel = e.path().map(relative).unwrap_or_else(|| ".".to_owned());
                let is_link = e.path().is_some_and(|p| p.is_symlink());
                // Unknown when the entry's type cannot be read (a
                // directory that may be listed but not entered).
                let is_dir = match e.path().map(std::fs::metadata) {
                    _ if e.loop_ancestor().is_some() => Some(true),
                    Some(Ok(meta)) => Some(meta.is_dir()),
                    Some(Err(_)) if is_link => Some(false),
                    _ => None,
                };
                if !Glob::reports(pattern, &rel, is_dir) {
                    continue;
                }
                let message = match (e.loop_ancestor(), e.io_error()) {
                    (Some(ancestor), _) => format!("symlink loop back to {}", relative(ancestor)),
                    (None, Some(io)) if is_link && io.kind() == io::ErrorKind::NotFound => {
                        "a dangling link: its target does not exist".to_owned()
                    }
                    (None, Some(io)) => io.to_string(),
                    (None, None) => e.to_string(),
                };
                found.push(Found::Broken { rel, message });
                continue;
            }
        };
        let file_type = entry.file_type();
        if file_type.is_dir() {
            if entry.depth() > limits.max_depth {
                return Err(format!(
                    "the directory tree is deeper than {} levels ({})",
                    limits.max_depth,
                    relative(entry.path())
                ));
            }
            continue;
        }
        let rel = relative(entry.path());
        if pattern.is_some_and(|p| !p.matches(&rel)) {
            continue;
        }
        if !file_type.is_file() {
            found.push(Found::Broken {
                rel,
                message: "not a regular file (a fifo, socket or device)".to_owned(),
            });
            continue;
        }
        found.push(Found::File {
            rel,
            path: entry.into_path(),
        });
    }
    for rel in outside.borrow_mut().drain(..) {
        found.push(Found::Broken {
            rel,
            message: "a link to outside the scan root (not followed)".to_owned(),
        });
    }
    Ok(found)
}

enum Msg {
    Processing(String),
    Done(String, Result<FileInfo, String>),
}

struct FileInfo {
    hash: blake3::Hash,
    bytes: u64,
    lines: u64,
}

/// Hashes every found file in order, streaming the results; stops early
/// when the job must stop or the receiver is gone.
fn hash_all(found: Vec<Found>, root: &Path, tx: &mpsc::Sender<Msg>, reporter: &Reporter) {
    let mut buf = vec![0u8; 64 * 1024];
    for item in found {
        if reporter.is_stopped() {
            return;
        }
        let sent = match item {
            Found::Broken { rel, message } => tx.blocking_send(Msg::Done(rel, Err(message))),
            Found::File { rel, path } => {
                if tx.blocking_send(Msg::Processing(rel.clone())).is_err() {
                    return;
                }
                // Checked again right before reading: the file may have
                // been replaced by a link since the walk.
                let inside = path.canonicalize().is_ok_and(|real| real.starts_with(root));
                let result = if inside {
                    hash_file(&path, &mut buf).map_err(|e| e.to_string())
                } else {
                    Err("a link to outside the scan root (not followed)".to_owned())
                };
                tx.blocking_send(Msg::Done(rel, result))
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn hash_file(path: &Path, buf: &mut [u8]) -> io::Result<FileInfo> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let (mut bytes, mut newlines, mut last) = (0u64, 0u64, b'\n');
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        bytes += n as u64;
        last = chunk[n - 1];
    }
    // A last line without a final newline still counts.
    let lines = newlines + u64::from(last != b'\n');
    Ok(FileInfo {
        hash: hasher.finalize(),
        bytes,
        lines,
    })
}

/// Totals and the manifest digest, over files in walk order.
#[derive(Default)]
struct Summary {
    files: u64,
    failed: u64,
    bytes: u64,
    lines: u64,
    digest: blake3::Hasher,
}

impl Summary {
    fn add(&mut self, rel: &str, file: &FileInfo) {
        self.files += 1;
        self.bytes += file.bytes;
        self.lines += file.lines;
        self.digest.update(rel.as_bytes());
        self.digest.update(b"\0");
        self.digest.update(file.hash.to_hex().as_bytes());
        self.digest.update(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a glob, a failure is reported when a match could be among it:
    /// a file by its own name, a directory by what it could hold.
    #[test]
    fn a_glob_reports_only_the_failures_a_match_could_be_among() -> Result<(), JobError> {
        let any_rs = Glob::new("**/*.rs")?;
        assert!(!Glob::reports(
            Some(&any_rs),
            ".venv/bin/python",
            Some(false)
        ));
        assert!(Glob::reports(Some(&any_rs), "src/lib.rs", Some(false)));
        assert!(Glob::reports(Some(&any_rs), "vendor/linked", Some(true)));
        let fixed = Glob::new("d0[0-4]/*.txt")?;
        assert!(!Glob::reports(Some(&fixed), "odd", Some(true)));
        assert!(!Glob::reports(Some(&fixed), "odd/loop", Some(true)));
        assert!(Glob::reports(Some(&fixed), "d01", Some(true)));
        assert!(!Glob::reports(Some(&fixed), "d01/deeper", Some(true)));
        assert!(Glob::reports(Some(&fixed), "d01/a.txt", Some(false)));
        assert!(!Glob::reports(Some(&fixed), "d01/a.md", Some(false)));
        let odd = Glob::new("odd/*")?;
        assert!(Glob::reports(Some(&odd), "odd/loop", Some(true)));
        assert!(Glob::reports(None, "anything", Some(false)));
        assert!(Glob::new("a/**b").is_err());
        // The scanned directory itself holds every match.
        assert!(Glob::reports(Some(&fixed), "", Some(true)));
        // A subdirectory whose type cannot be read may hold matches.
        assert!(Glob::reports(Some(&any_rs), "locked/sub", None));
        assert!(!Glob::reports(Some(&fixed), "locked", None));
        // A `/` inside a class splits no pattern part we rely on.
        let class = Glob::new("a[/]b/*.md")?;
        assert!(Glob::reports(Some(&class), "a", Some(true)));
        Ok(())
    }

    /// A walk stops as soon as the job must stop (here: cancelled), instead
    /// of collecting the whole tree first.
    #[tokio::test]
    async fn the_walk_stops_when_the_job_must_stop() -> Result<(), Box<dyn std::error::Error>> {
        use jobwire_core::{Backend, EventType, MemoryBackend, NewEvent, NewJob};
        let dir = tempfile::tempdir()?;
        for i in 0..2000 {
            std::fs::write(dir.path().join(format!("f{i}")), "x")?;
        }
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(Default::default()));
        let job = backend
            .create_job(NewJob::new("scan", json!({}), "alice"))
            .await?;
        backend
            .publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
            .await?;
        backend.cancel(&job.id).await?;
        let reporter = Reporter::new(backend, job.id, 1, 16);
        // The answer to a publish tells the reporter of the cancel.
        let _ = reporter.progress(0, 0, "walking").await;
        let _ = reporter.flush().await;
        assert!(reporter.is_stopped());
        let root = dir.path().canonicalize()?;
        let visited = AtomicU64::new(0);
        let walk = find(
            &root,
            &root,
            None,
            ScanLimits::default(),
            &reporter,
            &visited,
        )?;
        assert!(walk.is_empty(), "{} entries after the stop", walk.len());
        Ok(())
    }

    #[test]
    fn lines_count_a_last_line_without_newline() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut buf = vec![0u8; 4];
        for (text, lines) in [
            ("", 0),
            ("a", 1),
            ("a\n", 1),
            ("a\nb", 2),
            ("a\n\nbcdefgh\n", 3),
        ] {
            let path = dir.path().join("f");
            std::fs::write(&path, text)?;
            let info = hash_file(&path, &mut buf)?;
            assert_eq!(info.lines, lines, "{text:?}");
            assert_eq!(info.bytes, text.len() as u64);
            assert_eq!(info.hash, blake3::hash(text.as_bytes()));
        }
        Ok(())
    }
}
