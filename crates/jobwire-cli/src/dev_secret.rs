//! The JWT secret of `jobwire dev` when none is configured.
//!
//! `dev` signs its tokens with a secret of its own, kept in a file only the
//! user can read (`$XDG_STATE_HOME/jobwire/dev-secret`, else
//! `~/.local/state/jobwire/dev-secret`), so that:
//! - `jobwire token` can mint more tokens for a running `dev` (it reads the
//!   same file when no `JOBWIRE_JWT_SECRET` is set);
//! - tokens, and the web UI's sign-in, survive a restart of `dev`.
//!
//! The secret is never printed. A configured `JOBWIRE_JWT_SECRET` always
//! wins, and `serve` never uses this file.

use std::io::Write;
use std::path::PathBuf;

/// Where the dev secret lives, if a home or state directory is known.
pub(crate) fn path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|home| PathBuf::from(home).join(".local").join("state"))
        })?;
    Some(state.join("jobwire").join("dev-secret"))
}

/// The dev secret, if `jobwire dev` has made one.
pub(crate) fn load() -> Option<(String, PathBuf)> {
    let path = path()?;
    let secret = std::fs::read_to_string(&path).ok()?;
    let secret = secret.trim();
    (secret.len() >= 16).then(|| (secret.to_owned(), path))
}

/// The dev secret, made and saved first if there is none.
///
/// # Errors
/// When no state directory is known or the file cannot be written; the
/// caller then uses a secret for this run only.
pub(crate) fn load_or_create() -> std::io::Result<(String, PathBuf)> {
    if let Some(found) = load() {
        return Ok(found);
    }
    let path = path().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "neither XDG_STATE_HOME nor HOME is set",
        )
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    Ok((secret, path))
}
