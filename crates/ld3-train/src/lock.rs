//! Exclusive locks that say who holds them: one run per run directory and per output file. The
//! operating system releases a lock when its process ends, however it ends (kill -9 included), so
//! a lock left by a dead process is simply taken; the file names the holder (its process id) for
//! the error another process gets meanwhile.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ld3_solvers::{Error, Result};

/// A held lock; released (and, for a lock file of its own, removed) when dropped.
#[derive(Debug)]
pub struct Lock {
    file: Option<File>,
    path: PathBuf,
    remove: bool,
}

/// Maps an I/O error on `path` to the crate's error, naming the path.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |cause| Error::Io {
        path: path.display().to_string(),
        cause,
    }
}

impl Lock {
    /// Takes the lock file `path` (kept after release: a run directory's `lock`), or fails at once
    /// naming `what` and the process that holds it.
    pub fn acquire(path: &Path, what: &Path) -> Result<Self> {
        Self::take(path, what, false)
    }

    /// Takes the lock of the output file `out`: a hidden `.NAME.lock` beside it, removed on
    /// release, so nothing is left next to the output once the run is over.
    pub fn for_output(out: &Path) -> Result<Self> {
        let name = out
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{} is not a file path", out.display())))?;
        let mut lock_name = std::ffi::OsString::from(".");
        lock_name.push(name);
        lock_name.push(".lock");
        Self::take(&out.with_file_name(lock_name), out, true)
    }

    fn take(path: &Path, what: &Path, remove: bool) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(in_use(path, what)),
            Err(TryLockError::Error(e)) => return Err(io(path)(e)),
        }
        // A removable lock file may have been removed (and made again by a third run) between our
        // open and our lock: then ours is an orphan, and the path belongs to the other run.
        if remove && !same_file(&file, path) {
            return Err(in_use(path, what));
        }
        file.set_len(0).map_err(io(path))?;
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(path))?;
        Ok(Self {
            file: Some(file),
            path: path.to_path_buf(),
            remove,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so no other run can lock the name we are removing.
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.file.take());
    }
}

fn in_use(path: &Path, what: &Path) -> Error {
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    let holder = holder.trim();
    Error::Invalid(format!(
        "{} is in use by another ld3 run ({}); wait for it to finish, or choose another path",
        what.display(),
        if holder.is_empty() {
            "a process that has not written its id yet".to_string()
        } else {
            format!("process {holder}")
        }
    ))
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    // Elsewhere an open file cannot be removed, so the path is still ours if it exists.
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("schedule.json");
        let held = Lock::for_output(&out).unwrap();
        let e = Lock::for_output(&out).unwrap_err().to_string();
        assert!(
            e.contains("schedule.json is in use")
                && e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(held);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "an output's lock file goes with the lock"
        );
        let again = Lock::for_output(&out).unwrap();
        drop(again);

        let kept = dir.path().join("lock");
        let held = Lock::acquire(&kept, dir.path()).unwrap();
        assert!(Lock::acquire(&kept, dir.path()).is_err());
        drop(held);
        assert!(kept.exists(), "a run directory's lock file stays");
        Lock::acquire(&kept, dir.path()).unwrap();
    }
}
