//! Output paths checked before any work: a run that cannot write its result should fail in the
//! first second, naming the path the user gave, not after minutes of sampling or training.

use std::path::Path;

use anyhow::{bail, Result};

/// The folder a file `path` goes into (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fails unless files can be created in `dir` (which must exist).
fn check_writable(flag: &str, given: &Path, dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".ld3-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "{flag} {}: cannot write in {} ({e})",
            given.display(),
            dir.display()
        ),
    }
}

/// `path` can be written as a file: not a folder, in an existing, writable folder.
pub fn check_file(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: is a folder; give a file name", path.display());
    }
    let dir = folder_of(path);
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    check_writable(flag, path, dir)
}

/// `path` can be used as an output folder: an existing, writable folder, or a new one in an
/// existing, writable folder.
pub fn check_folder(flag: &str, path: &Path) -> Result<()> {
    if path.exists() {
        if !path.is_dir() {
            bail!("{flag} {}: is a file, not a folder", path.display());
        }
        return check_writable(flag, path, path);
    }
    let parent = folder_of(path);
    if !parent.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    check_writable(flag, path, parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_flag_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = check_file("--out", d).unwrap_err().to_string();
        assert!(e.starts_with("--out ") && e.contains("is a folder"), "{e}");
        let e = check_file("--out", &d.join("no/such/x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        check_file("--out", &d.join("x.safetensors")).unwrap();
        std::fs::write(d.join("f"), "").unwrap();
        let e = check_folder("--images", &d.join("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file"), "{e}");
        check_folder("--images", &d.join("new")).unwrap();
        assert!(!d.join("new").exists(), "checking creates nothing");
        assert_eq!(
            std::fs::read_dir(d).unwrap().count(),
            1,
            "no probe left behind"
        );
    }
}
