//! A fetched file against the registry's pins and against the hub's own content hash.

use std::path::Path;

use crate::{Error, HubFile, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |cause| Error::Io {
        path: path.display().to_string(),
        cause,
    }
}

/// The SHA-256 of a file, in lower-case hex.
pub fn sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks `path` against `file`'s pinned size and SHA-256, and against the hub's content hash:
/// the cache stores each large (LFS) file as `blobs/<sha256>`, so the name of the blob a snapshot
/// file points to is the hash the hub computed.
pub fn verify(path: &Path, file: &HubFile) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if let Some(size) = file.size {
        if meta.len() != size {
            return Err(Error::Corrupt(format!(
                "{}: {} bytes, expected {size}; delete it and fetch again",
                path.display(),
                meta.len()
            )));
        }
    }
    let blob_hash: Option<String> = std::fs::read_link(path)
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.len() == 64 && n.chars().all(|c| c.is_ascii_hexdigit()));
    let wanted: Vec<String> = file
        .sha256
        .map(str::to_string)
        .into_iter()
        .chain(blob_hash)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let got = sha256(path)?;
    if let Some(w) = wanted.iter().find(|w| !w.eq_ignore_ascii_case(&got)) {
        return Err(Error::Corrupt(format!(
            "{}: SHA-256 {got}, expected {w}; the download is corrupt — delete it and fetch again",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_blob_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256(&p).unwrap(), abc);
        let pinned = |size, sha256| HubFile {
            path: "f",
            size,
            sha256,
        };
        verify(&p, &pinned(Some(3), Some(abc))).unwrap();
        verify(&p, &pinned(None, None)).unwrap();
        let e = verify(&p, &pinned(Some(4), None)).unwrap_err().to_string();
        assert!(e.contains("3 bytes, expected 4"), "{e}");
        let zeros = "0000000000000000000000000000000000000000000000000000000000000000";
        let e = verify(&p, &pinned(None, Some(zeros)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt"), "{e}");
        // As the hub cache keeps it: a snapshot link to blobs/<sha256>, which must match.
        #[cfg(unix)]
        {
            let blobs = dir.path().join("blobs");
            std::fs::create_dir(&blobs).unwrap();
            let good = blobs.join(abc);
            std::fs::write(&good, b"abc").unwrap();
            let link = dir.path().join("good");
            std::os::unix::fs::symlink(&good, &link).unwrap();
            verify(&link, &pinned(None, None)).unwrap();
            let bad = blobs.join("1".repeat(64));
            std::fs::write(&bad, b"abc").unwrap();
            let link = dir.path().join("bad");
            std::os::unix::fs::symlink(&bad, &link).unwrap();
            assert!(verify(&link, &pinned(None, None)).is_err());
        }
    }
}
