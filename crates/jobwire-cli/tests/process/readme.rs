//! The README's terminal section, followed literally by a new user: start
//! `jobwire dev` with no secret configured, take the `export` line it
//! prints, and run each command of the README's "Using it from a terminal"
//! block through `sh`, with `jobwire` on the `PATH`. The folder the user
//! scans holds a dangling symlink, whose per-file `error` event must not end
//! the watch (it once did: the CLI took it for a control error).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// `jobwire dev`, run as a user would: no JWT secret, a home of its own.
struct Dev {
    child: Child,
    /// `JOBWIRE_TOKEN` and `JOBWIRE_URL`, from the printed export line.
    exports: Vec<(String, String)>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `bin/jobwire` (a symlink to the binary under test), so that README
/// lines run unchanged.
fn bin_dir(home: &Path) -> Result<std::path::PathBuf> {
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_jobwire"), bin.join("jobwire"))?;
    Ok(bin)
}

fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn start_dev(home: &Path, cwd: &Path, path: &str) -> Result<Dev> {
    let mut child = Command::new("jobwire")
        .arg("dev")
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        // Port 0: no race for a free port with tests running beside;
        // the URL dev prints carries the port it got.
        .env("JOBWIRE_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    // The output is read on a thread: `dev` prints once, then runs.
    let (tx, rx) = std::sync::mpsc::channel();
    // It keeps reading after the test stopped listening, as a terminal
    // would (`dev` itself survives a closed stdout: `dev_survives_...`).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut printed = Vec::new();
    let export = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .with_context(|| format!("dev printed no export line: {printed:?}"))?;
        if let Some(rest) = line.trim().strip_prefix("export ") {
            break rest.to_owned();
        }
        printed.push(line);
    };
    let exports = export
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').context("not NAME=VALUE")?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        exports.iter().any(|(k, _)| k == "JOBWIRE_TOKEN")
            && exports.iter().any(|(k, _)| k == "JOBWIRE_URL"),
        "{export}"
    );
    Ok(Dev { child, exports })
}

/// The README's "Using it from a terminal" commands, comments removed.
fn readme_commands() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))?;
    let section = readme
        .split("## Using it from a terminal")
        .nth(1)
        .context("README has no terminal section")?;
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("no sh block in the terminal section")?;
    Ok(block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Runs one shell line as the user would, in `cwd`, with dev's exports.
fn sh(line: &str, cwd: &Path, path: &str, home: &Path, dev: &Dev) -> Result<Output> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home);
    for (k, v) in &dev.exports {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_terminal_section_works_as_written() -> Result<()> {
    let home = tempfile::tempdir()?;
    let bin = bin_dir(home.path())?;
    let path = path_with(&bin);
    // The user's project: some Rust files, a text file, and a link to
    // nowhere (a per-file error event).
    let project = tempfile::tempdir()?;
    std::fs::create_dir_all(project.path().join("src"))?;
    std::fs::write(project.path().join("src/main.rs"), "fn main() {}\n")?;
    std::fs::write(project.path().join("src/lib.rs"), "//! lib\n")?;
    std::fs::write(project.path().join("notes.txt"), "hi\n")?;
    std::os::unix::fs::symlink("/nonexistent", project.path().join("dangling"))?;

    let dev = start_dev(home.path(), project.path(), &path)?;
    let cwd = project.path();
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for line in readme_commands()? {
        // `JOB_ID...` stands for jobs submitted before; `cancel` gets a job
        // still running.
        let line = if line.contains("cancel JOB_ID") {
            let out = sh(
                "jobwire submit demo --param steps=500 --param delay_ms=20",
                cwd,
                &path,
                home.path(),
                &dev,
            )?;
            ensure!(out.status.success(), "{}", text(&out));
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            line.replace("JOB_ID", &id)
        } else {
            line.replace("JOB_ID...", &ids.join(" "))
        };
        let out = sh(&line, cwd, &path, home.path(), &dev)?;
        ensure!(out.status.success(), "`{line}`: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match line.split_whitespace().nth(1) {
            Some("submit") if line.contains("--watch") => {
                let events = json_lines(&out);
                ensure!(
                    events.last().map(|e| e["type"].clone()) == Some("job_completed".into()),
                    "`{line}`: {}",
                    text(&out)
                );
            }
            Some("submit") => ids.push(stdout),
            Some("watch") => {
                let ended = json_lines(&out)
                    .iter()
                    .filter(|e| e["type"] == "job_completed")
                    .count();
                let states = json_lines(&out)
                    .iter()
                    .filter(|e| e["type"] == "current_state" && e["data"]["status"] == "completed")
                    .count();
                ensure!(ended + states == ids.len(), "`{line}`: {}", text(&out));
            }
            Some("token") => tokens.push(stdout),
            _ => {}
        }
    }
    ensure!(!ids.is_empty(), "the README submits no job");

    // The token `jobwire token` made is accepted by dev.
    let token = tokens.first().context("the README mints no token")?;
    let out = sh(
        &format!("JOBWIRE_TOKEN={token} jobwire jobs --json"),
        cwd,
        &path,
        home.path(),
        &dev,
    )?;
    ensure!(
        out.status.success(),
        "a token from `jobwire token`: {}",
        text(&out)
    );

    // Issue 12's reproduction: a scan of a folder with a dangling link,
    // watched, completes with its error event shown, and exits 0.
    std::fs::create_dir(cwd.join("d"))?;
    std::os::unix::fs::symlink("/nonexistent", cwd.join("d/dangling"))?;
    std::fs::write(cwd.join("d/a.txt"), "hi\n")?;
    let out = sh(
        "jobwire submit scan --param path=./d --watch",
        cwd,
        &path,
        home.path(),
        &dev,
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    ensure!(
        events.iter().any(|e| e["type"] == "error"),
        "no error event shown: {}",
        text(&out)
    );
    ensure!(
        events.last().map(|e| e["type"].clone()) == Some("job_completed".into()),
        "{}",
        text(&out)
    );
    Ok(())
}

/// `jobwire dev | true`: dev keeps serving when its stdout is closed
/// before it prints (printing its banner into a closed pipe once panicked
/// and killed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_survives_a_closed_stdout() -> Result<()> {
    let home = tempfile::tempdir()?;
    let port = jobwire_testkit::free_port()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .arg("dev")
        .env_clear()
        .env("HOME", home.path())
        .env("JOBWIRE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // The reading end goes away at once: every write of dev's fails.
    drop(child.stdout.take());
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        if let Ok(r) = reqwest::get(&url).await {
            break r.status().as_u16() == 200;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alive = child.try_wait()?.is_none();
    let _ = child.kill();
    let _ = child.wait();
    ensure!(served && alive, "dev died when its stdout was closed");
    Ok(())
}

/// `jobwire token` with no secret, before `dev` ever ran, or for a user or
/// a lifetime no server accepts: one clear line and exit 2, not a token
/// nobody accepts.
#[test]
fn token_without_a_secret_or_a_dev_secret_says_what_to_do() -> Result<()> {
    let home = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
        .args(["token", "--sub", "alice"])
        .env_clear()
        .env("HOME", home.path())
        .output()?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("JOBWIRE_JWT_SECRET") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    if !out.stdout.is_empty() {
        bail!("printed a token: {}", text(&out));
    }
    // Nor one the server would refuse: an empty user, an expiry now.
    for (args, needle) in [
        (&["--sub", ""][..], "--sub: the token's sub (user) is empty"),
        (&["--sub", "a\nb"], "--sub: "),
        (
            &["--sub", "alice", "--ttl", "0s"],
            "--ttl: a token lives at least 1s",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_jobwire"))
            .arg("token")
            .args(args)
            .env_clear()
            .env("JOBWIRE_JWT_SECRET", "0123456789abcdef0123")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2) && out.stdout.is_empty() && stderr.contains(needle),
            "{args:?}: {}",
            text(&out)
        );
    }
    Ok(())
}
