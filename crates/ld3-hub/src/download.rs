//! Fetching a hub repository's files into the Hugging Face cache (the `download` feature).

use std::path::Path;

use crate::{Error, HubFile, Result};

/// Downloads `files` of `repo` at `revision` into the Hugging Face cache `cache` (what is already
/// there is not fetched again), with a progress bar; `HF_TOKEN` is used when set.
pub fn download(cache: &Path, repo: &str, revision: &str, files: &[HubFile]) -> Result<()> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let mut builder = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| Error::Download(format!("hub client: {e}")))?;
    let r = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    for f in files {
        eprintln!("fetching {repo}@{revision}/{}", f.path);
        r.get(f.path).map_err(|e| {
            Error::Download(format!(
                "downloading {repo}/{}: {e} (no network? set HF_HUB_OFFLINE=1 to use the cache only)",
                f.path
            ))
        })?;
    }
    Ok(())
}
