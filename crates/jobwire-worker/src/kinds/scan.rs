//! `scan`: walk a directory and, for each file, hash it with BLAKE3 and
//! count its bytes and lines, reporting `file_processing` and
//! `file_completed` per file. A file that cannot be read (or is not a
//! regular file, or is a symlink loop) is a per-file `error` event, not a
//! job failure. The job's result is a manifest summary: counts, totals and a
//! digest over every file's path and hash.
//!
//! The walk and the hashing are blocking file-system work, done on a
//! blocking thread that streams its findings to the async side, which
//! reports them; the thread checks between files whether the job must stop.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use jobwire_core::kinds::ScanParams;
use serde_json::json;
use tokio::sync::mpsc;
use walkdir::WalkDir;

use crate::handler::{Handler, JobContext, JobError, JobOutcome};
use crate::reporter::Reporter;

/// The `scan` handler.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// When set, only directories under it may be scanned, and files that
    /// resolve outside it (through symlinks) are refused.
    root: Option<PathBuf>,
}

impl Scan {
    /// A scanner limited to `root` (relative job paths resolve against it),
    /// or unlimited with `None`.
    pub fn new(root: Option<PathBuf>) -> Scan {
        Scan { root }
    }

    /// The directory a job asks for, checked against the root.
    fn resolve(&self, path: &str) -> Result<(PathBuf, Option<PathBuf>), JobError> {
        let root = match &self.root {
            Some(root) => Some(root.canonicalize().map_err(|e| {
                JobError::msg(format!("the scan root {} is unusable: {e}", root.display()))
            })?),
            None => None,
        };
        let asked = match &root {
            Some(root) => root.join(path),
            None => PathBuf::from(path),
        };
        let dir = asked
            .canonicalize()
            .map_err(|e| JobError::msg(format!("cannot open {path}: {e}")))?;
        if let Some(root) = &root {
            if !dir.starts_with(root) {
                return Err(JobError::msg(format!(
                    "{path} is outside the scan root {}",
                    root.display()
                )));
            }
        }
        if !dir.is_dir() {
            return Err(JobError::msg(format!("{path} is not a directory")));
        }
        Ok((dir, root))
    }
}

#[async_trait]
impl Handler for Scan {
    async fn run(&self, job: JobContext) -> Result<JobOutcome, JobError> {
        let params = ScanParams::parse(job.params()).map_err(JobError::msg)?;
        let (dir, root) = self.resolve(&params.path)?;
        let pattern = match &params.glob {
            Some(g) => {
                Some(glob::Pattern::new(g).map_err(|e| JobError::msg(format!("glob {g:?}: {e}")))?)
            }
            None => None,
        };
        let reporter = job.reporter();

        let walk = {
            let (dir, reporter) = (dir.clone(), reporter.clone());
            tokio::task::spawn_blocking(move || {
                find(&dir, root.as_deref(), pattern.as_ref(), &reporter)
            })
        };
        let found = walk
            .await
            .map_err(|e| JobError::msg(format!("the directory walk crashed: {e}")))?;
        reporter.check()?;
        let total = found.len() as u64;
        reporter
            .total_files(total, &format!("found {total} files"))
            .await?;

        let (tx, mut rx) = mpsc::channel(1024);
        let hashing = {
            let reporter = reporter.clone();
            tokio::task::spawn_blocking(move || hash_all(found, &tx, &reporter))
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

/// Walks `dir` in a stable order (by name), following symlinks; keeps the
/// files matching `pattern` (relative to `dir`).
fn find(
    dir: &Path,
    root: Option<&Path>,
    pattern: Option<&glob::Pattern>,
    reporter: &Reporter,
) -> Vec<Found> {
    let mut found = Vec::new();
    let relative = |p: &Path| {
        p.strip_prefix(dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let glob_opts = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    for entry in WalkDir::new(dir).follow_links(true).sort_by_file_name() {
        if reporter.is_stopped() {
            break;
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let rel = e.path().map(relative).unwrap_or_else(|| ".".to_owned());
                let message = match (e.loop_ancestor(), e.io_error()) {
                    (Some(ancestor), _) => format!("symlink loop back to {}", relative(ancestor)),
                    (None, Some(io)) => io.to_string(),
                    (None, None) => e.to_string(),
                };
                found.push(Found::Broken { rel, message });
                continue;
            }
        };
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        let rel = relative(entry.path());
        if pattern.is_some_and(|p| !p.matches_with(&rel, glob_opts)) {
            continue;
        }
        if !file_type.is_file() {
            found.push(Found::Broken {
                rel,
                message: "not a regular file (a fifo, socket or device)".to_owned(),
            });
            continue;
        }
        if let Some(root) = root {
            let inside = entry
                .path()
                .canonicalize()
                .is_ok_and(|real| real.starts_with(root));
            if !inside {
                found.push(Found::Broken {
                    rel,
                    message: "resolves outside the scan root".to_owned(),
                });
                continue;
            }
        }
        found.push(Found::File {
            rel,
            path: entry.into_path(),
        });
    }
    found
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
fn hash_all(found: Vec<Found>, tx: &mpsc::Sender<Msg>, reporter: &Reporter) {
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
                let result = hash_file(&path, &mut buf).map_err(|e| e.to_string());
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
