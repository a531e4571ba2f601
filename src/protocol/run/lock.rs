//! A run's lock file, so that processes sharing a results folder (cluster
//! shards) never compute one run twice.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io};

/// A run's lock file: created exclusively before the run is computed,
/// removed when it is saved (or fails). A lock left by a process of this
/// machine that is no longer alive is taken over.
pub(super) struct RunLock(PathBuf);

impl RunLock {
    /// `Ok(Ok(lock))`, or `Ok(Err(holder))` when another live process holds it.
    pub(super) fn take(path: &Path) -> Result<std::result::Result<RunLock, String>> {
        let me = crate::runner::invocation_id();
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(me.as_bytes()).map_err(io(path))?;
                    return Ok(Ok(RunLock(path.to_path_buf())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    let mut parts = holder.trim().split(':');
                    let (host, pid) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let my_host = me.split(':').next().unwrap_or("");
                    let dead = host == my_host
                        && !pid.is_empty()
                        && !Path::new("/proc").join(pid).exists();
                    if dead || holder.trim().is_empty() {
                        tracing::warn!("taking over the stale lock {} ({holder})", path.display());
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    return Ok(Err(holder.trim().to_string()));
                }
                Err(e) => {
                    return Err(Error::Io {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        Ok(Err(format!("{} (could not be taken over)", path.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
