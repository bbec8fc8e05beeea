//! The `scan` kind on a generated tree of 10,000 files with the awkward
//! cases a real tree has: an unreadable file, a fifo, a dangling symlink and
//! a symlink loop.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use jobwire_core::{Backend, EventType, JobState, JobStatus, NewJob};
use jobwire_testkit::RedisServer;
use jobwire_worker::Worker;
use serde_json::{json, Value};

use crate::support::{self, config, count, log, wait_finished, Running};

/// What a generated tree holds.
#[derive(Debug, Default)]
struct Expected {
    files: u64,
    failed: u64,
    bytes: u64,
    lines: u64,
}

/// 100 directories of 100 files; file `i` holds `i % 7` lines, the last
/// one without its newline when `i` is odd.
fn make_tree(root: &Path) -> Result<Expected> {
    let mut expected = Expected::default();
    for d in 0..100 {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir(&dir)?;
        for f in 0..100 {
            let i = d * 100 + f;
            let lines = i % 7;
            let mut text = "x".repeat(i % 13 + 1) + "\n";
            text = text.repeat(lines);
            if i % 2 == 1 && text.ends_with('\n') {
                text.pop();
            }
            std::fs::write(dir.join(format!("f{f:03}.txt")), &text)?;
            expected.files += 1;
            expected.bytes += text.len() as u64;
            expected.lines += lines as u64;
        }
    }
    let odd = root.join("odd");
    std::fs::create_dir(&odd)?;
    // Unreadable, unless the tests run as root (who reads anything).
    let locked = odd.join("locked.txt");
    std::fs::write(&locked, "secret\n")?;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000))?;
    if std::fs::File::open(&locked).is_ok() {
        expected.files += 1;
        expected.bytes += 7;
        expected.lines += 1;
    } else {
        expected.failed += 1;
    }
    let status = Command::new("mkfifo").arg(odd.join("pipe")).status()?;
    ensure!(status.success(), "mkfifo failed");
    expected.failed += 1;
    std::os::unix::fs::symlink(odd.join("missing"), odd.join("dangling"))?;
    expected.failed += 1;
    std::os::unix::fs::symlink(&odd, odd.join("loop"))?;
    expected.failed += 1;
    Ok(expected)
}

async fn scan(backend: &dyn Backend, params: Value) -> Result<JobState> {
    let job = backend
        .create_job(NewJob::new("scan", params, "alice"))
        .await?;
    wait_finished(backend, &job.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_counts_a_tree_of_ten_thousand_files() -> Result<()> {
    let tree = tempfile::tempdir()?;
    let expected = make_tree(tree.path())?;
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let worker = Worker::builder(backend.clone())
        .config(config("w1"))
        .builtin(Some(tree.path().to_path_buf()))
        .build()?;
    let running = Running::start(worker);
    // An absolute path inside the root works as well as a relative one.
    let path = tree.path().to_string_lossy().into_owned();

    let state = scan(backend.as_ref(), json!({ "path": path })).await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    let result = state.result.clone().context("no result")?;
    let total = expected.files + expected.failed;
    ensure!(
        result["files"] == json!(expected.files),
        "{result} vs {expected:?}"
    );
    ensure!(
        result["failed"] == json!(expected.failed),
        "{result} vs {expected:?}"
    );
    ensure!(
        result["bytes"] == json!(expected.bytes),
        "{result} vs {expected:?}"
    );
    ensure!(
        result["lines"] == json!(expected.lines),
        "{result} vs {expected:?}"
    );
    ensure!(
        (state.total_files, state.processed_files, state.failed_files)
            == (total, expected.files, expected.failed),
        "{state:?}"
    );

    let events = log(backend.as_ref(), &state.id).await?;
    ensure!(count(&events, EventType::FileCompleted) as u64 == expected.files);
    ensure!(count(&events, EventType::Error) as u64 == expected.failed);
    let first = events
        .iter()
        .find(|e| e.kind == EventType::FileCompleted)
        .context("no file_completed")?;
    ensure!(first.data["file"] == json!("d00/f000.txt"), "{first:?}");
    let content = std::fs::read(tree.path().join("d00/f000.txt"))?;
    ensure!(
        first.data["blake3"] == json!(blake3::hash(&content).to_hex().as_str()),
        "{first:?}"
    );
    let errors: Vec<String> = events
        .iter()
        .filter(|e| e.kind == EventType::Error)
        .map(|e| format!("{} {}", e.data["file"], e.data["message"]))
        .collect();
    for needle in ["pipe", "dangling", "loop"] {
        ensure!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle}: {errors:?}"
        );
    }
    ensure!(
        errors.iter().any(|e| e.contains("symlink loop")),
        "{errors:?}"
    );

    // The same tree gives the same digest; a changed file changes it.
    let again = scan(backend.as_ref(), json!({ "path": path })).await?;
    ensure!(
        again.result == state.result,
        "{:?} vs {:?}",
        again.result,
        state.result
    );
    std::fs::write(tree.path().join("d42/f042.txt"), "changed")?;
    let changed = scan(backend.as_ref(), json!({ "path": path })).await?;
    let digest = |s: &JobState| s.result.as_ref().map(|r| r["manifest_digest"].clone());
    ensure!(
        digest(&changed) != digest(&state),
        "the digest ignored a change"
    );

    // A glob keeps only the matching files.
    let some = scan(
        backend.as_ref(),
        json!({ "path": path, "glob": "d0[0-4]/*.txt" }),
    )
    .await?;
    ensure!(
        some.result.as_ref().map(|r| r["files"].clone()) == Some(json!(500)),
        "{some:?}"
    );
    // ... and reports only the failures a match could be among: none of
    // odd/'s here; all of them when the glob is odd/*.
    ensure!(some.failed_files == 0, "{some:?}");
    let odd = scan(backend.as_ref(), json!({ "path": path, "glob": "odd/*" })).await?;
    ensure!(
        odd.failed_files == expected.failed && odd.total_files == 4,
        "{odd:?}"
    );
    let errors = log(backend.as_ref(), &odd.id).await?;
    ensure!(
        errors.iter().any(|e| e.kind == EventType::Error
            && e.data["file"] == "odd/dangling"
            && e.data["message"] == "a dangling link: its target does not exist"),
        "{errors:?}"
    );
    running.shut_down().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_refuses_paths_outside_its_root_and_missing_directories() -> Result<()> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("inside"))?;
    std::fs::write(root.path().join("inside/a.txt"), "a\n")?;
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("secret.txt"), "s\n")?;
    std::os::unix::fs::symlink(outside.path(), root.path().join("inside/escape"))?;
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let worker = Worker::builder(backend.clone())
        .config(config("w1"))
        .builtin(Some(root.path().to_path_buf()))
        .build()?;
    let running = Running::start(worker);

    let state = scan(backend.as_ref(), json!({ "path": "inside" })).await?;
    ensure!(state.status == JobStatus::Completed, "{state:?}");
    let result = state.result.context("no result")?;
    ensure!(
        result["files"] == json!(1) && result["failed"] == json!(1),
        "{result}"
    );
    let first_scan = state.id.clone();
    let events = log(backend.as_ref(), &state.id).await?;
    ensure!(
        events.iter().any(|e| e.kind == EventType::Error
            && e.data["message"]
                .as_str()
                .is_some_and(|m| m.contains("outside the scan root"))),
        "{events:?}"
    );

    // Outside, missing, or not a directory: one answer, so that a job
    // cannot learn what exists outside the root.
    for path in [
        outside.path().to_string_lossy().into_owned(),
        "../".to_owned(),
        "nope".to_owned(),
        "inside/a.txt".to_owned(),
        "inside/escape".to_owned(),
    ] {
        let state = scan(backend.as_ref(), json!({ "path": path })).await?;
        ensure!(state.status == JobStatus::Failed, "{path}: {state:?}");
        let error = state.error.unwrap_or_default();
        ensure!(
            error.starts_with(&format!("no directory {path:?} under the scan root")),
            "{path}: {error}"
        );
    }
    // Nothing of the outside directory's content was named in any event.
    let events = log(backend.as_ref(), &first_scan).await?;
    ensure!(
        !format!("{events:?}").contains("secret.txt"),
        "a file outside the root was named: {events:?}"
    );
    running.shut_down().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_without_a_root_is_refused() -> Result<()> {
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let running = Running::start(support::builtin(&backend, config("w1")).build()?);
    let here = std::env::current_dir()?.to_string_lossy().into_owned();
    let state = scan(backend.as_ref(), json!({ "path": here })).await?;
    ensure!(state.status == JobStatus::Failed, "{state:?}");
    ensure!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("scan is disabled") && e.contains("JOBWIRE_SCAN_ROOT")),
        "{:?}",
        state.error
    );
    ensure!(state.total_files == 0, "it walked: {state:?}");
    running.shut_down().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_stops_at_its_entry_and_depth_limits() -> Result<()> {
    let root = tempfile::tempdir()?;
    let wide = root.path().join("wide");
    std::fs::create_dir(&wide)?;
    for i in 0..300 {
        std::fs::write(wide.join(format!("f{i}")), "x")?;
    }
    let mut deep = root.path().join("deep");
    for level in 0..12 {
        deep = deep.join(format!("l{level}"));
    }
    std::fs::create_dir_all(&deep)?;
    let server = RedisServer::start()?;
    let backend = support::backend(&server).await?;
    let scan_kind = jobwire_worker::kinds::Scan::new(Some(root.path().to_path_buf())).with_limits(
        jobwire_worker::kinds::ScanLimits {
            max_entries: 100,
            max_depth: 8,
        },
    );
    let worker = Worker::builder(backend.clone())
        .config(config("w1"))
        .handler("scan", scan_kind)
        .build()?;
    let running = Running::start(worker);
    for (path, expected) in [
        ("wide", "more than 100 entries"),
        ("deep", "deeper than 8 levels"),
    ] {
        let state = scan(backend.as_ref(), json!({ "path": path })).await?;
        ensure!(state.status == JobStatus::Failed, "{path}: {state:?}");
        ensure!(
            state.error.as_deref().is_some_and(|e| e.contains(expected)),
            "{path}: {:?}",
            state.error
        );
    }
    running.shut_down().await?;
    Ok(())
}
