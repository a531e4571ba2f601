//! Extracting an image zip: every entry checked before anything is written
//! (absolute paths, `..` components, symbolic links and special files
//! refused, naming the entry), each file written under a temporary name and
//! renamed.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};

use super::file_err;
use crate::error::{Result, io};

/// The path a zip entry (or descriptor name) stands for below the target
/// folder, `None` for the folder itself; an error for one that would leave it.
pub(super) fn safe_relative(name: &str) -> std::result::Result<Option<PathBuf>, &'static str> {
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    let n = name.replace('\\', "/");
    if n.starts_with('/') || n.as_bytes().get(1) == Some(&b':') {
        return Err("is an absolute path");
    }
    let mut out = PathBuf::new();
    for c in n.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("has a `..` component (it would escape the target folder)"),
            c => out.push(c),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Extracts `zip` into `dest` after checking every entry; returns the number
/// of files written. The zip must yield the folder `images`.
pub(super) fn extract(zip: &Path, dest: &Path, images: &Path) -> Result<usize> {
    let f = File::open(zip).map_err(io(zip))?;
    let mut ar = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| file_err(zip, format!("not a readable zip: {e}")))?;
    // Check every entry before writing anything.
    let mut plan = Vec::with_capacity(ar.len());
    for i in 0..ar.len() {
        let e = ar
            .by_index_raw(i)
            .map_err(|e| file_err(zip, format!("entry {i}: {e}")))?;
        let name = e
            .name()
            .map_err(|e| file_err(zip, format!("entry {i}: {e}")))?
            .into_owned();
        let refuse = |why: &str| {
            file_err(
                zip,
                format!("unsafe entry {name:?}: {why}; nothing was extracted"),
            )
        };
        let rel = safe_relative(&name).map_err(refuse)?;
        if e.enclosed_name().is_none() {
            return Err(refuse("it would escape the target folder"));
        }
        let kind = e.unix_mode().map(|m| m & 0o170000).unwrap_or(0);
        if e.is_symlink() || kind == 0o120000 {
            return Err(refuse("it is a symbolic link"));
        }
        if kind != 0 && kind != 0o100000 && kind != 0o040000 {
            return Err(refuse("it is neither a regular file nor a folder"));
        }
        if e.encrypted() {
            return Err(file_err(zip, format!("entry {name:?} is encrypted")));
        }
        let Some(rel) = rel else { continue };
        if rel
            .components()
            .next()
            .is_some_and(|c| c.as_os_str() == "__MACOSX")
        {
            continue;
        }
        plan.push((i, name, rel, e.is_dir() || kind == 0o040000));
    }
    let pid = std::process::id();
    let mut files = 0;
    for (i, name, rel, is_dir) in plan {
        let out = dest.join(&rel);
        if is_dir {
            fs::create_dir_all(&out).map_err(io(&out))?;
            continue;
        }
        let parent = out.parent().unwrap_or(dest);
        fs::create_dir_all(parent).map_err(io(parent))?;
        let fname = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{fname}.{pid}.tmp"));
        let mut e = ar
            .by_index(i)
            .map_err(|e| file_err(zip, format!("entry {name:?}: {e}")))?;
        let res = (|| {
            let mut w = BufWriter::new(File::create(&tmp)?);
            io::copy(&mut e, &mut w)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        if let Err(err) = res {
            let _ = fs::remove_file(&tmp);
            return Err(file_err(
                zip,
                format!("entry {name:?} -> {}: {err}", out.display()),
            ));
        }
        fs::rename(&tmp, &out).map_err(io(&out))?;
        files += 1;
    }
    let folder = dest.join(images);
    if !folder.is_dir() {
        return Err(file_err(
            zip,
            format!(
                "holds no {}/ folder (the descriptor's `images`)",
                images.display()
            ),
        ));
    }
    tracing::info!(
        "{}: extracted {files} files into {}",
        zip.display(),
        dest.display()
    );
    Ok(files)
}
