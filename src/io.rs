//! File writes that a crash cannot leave half done: a file, or a folder of
//! files, is written under a temporary name in the same folder, fsynced, and
//! renamed into place. Used by every stage that writes (data audits and
//! downloads, checkpoints, results, reports), so it sits below them all.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io};

pub fn fsync_file(p: &Path) -> Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io(p))
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io {
            path: path.into(),
            source: e,
        });
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes the folder `dir` atomically: `fill` writes its files into a fresh
/// temporary folder beside it, every file there is fsynced, and the folder is
/// renamed to `dir` (replacing an older one). A crash leaves the old folder
/// or the new one, never a mix; a failed `fill` leaves the old one.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let res = fill(&tmp).and_then(|()| {
        for e in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let p = e.map_err(io(&tmp))?.path();
            if p.is_file() {
                fsync_file(&p)?;
            }
        }
        Ok(())
    });
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    Ok(dir.to_path_buf())
}
