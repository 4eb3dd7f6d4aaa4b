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

/// Downloads `url` to `dest` (created with its folder), with progress on stderr. The bytes go to
/// `dest.partial` first and are renamed into place only when complete; an interrupted download
/// resumes from the partial file (an HTTP range request; a server that ignores it starts over).
/// A `dest` already there is kept.
pub fn download_url(url: &str, dest: &Path) -> Result<()> {
    use std::io::{Read, Write};
    if dest.is_file() {
        return Ok(());
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |cause| Error::Io { path, cause }
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = request
        .call()
        .map_err(|e| Error::Download(format!("downloading {url}: {e}")))?;
    let resumed = response.status() == 206;
    let total = response
        .header("Content-Length")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| if resumed { n + have } else { n });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&partial)
        .map_err(io(&partial))?;
    let mut done = if resumed { have } else { 0 };
    if resumed {
        eprintln!("resuming {url} at {} MB", have / 1_000_000);
    } else {
        eprintln!("fetching {url}");
    }
    let mut body = response.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut shown = 0;
    loop {
        let n = body.read(&mut buf).map_err(|e| {
            Error::Download(format!("downloading {url}: {e} (run again to resume)"))
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(io(&partial))?;
        done += n as u64;
        if done - shown >= 16 << 20 {
            shown = done;
            match total {
                Some(t) => eprint!("\r  {} / {} MB", done / 1_000_000, t / 1_000_000),
                None => eprint!("\r  {} MB", done / 1_000_000),
            }
        }
    }
    eprintln!("\r  {} MB", done / 1_000_000);
    file.sync_all().map_err(io(&partial))?;
    if let Some(t) = total.filter(|t| *t != done) {
        return Err(Error::Download(format!(
            "downloading {url}: the connection closed after {done} of {t} bytes (run again to \
             resume)"
        )));
    }
    std::fs::rename(&partial, dest).map_err(io(dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-file HTTP server on localhost: answers `n` requests, honouring `Range: bytes=K-`,
    /// and cuts the first answer short after `cut` bytes when given.
    fn serve(body: Vec<u8>, n: usize, cut: Option<usize>) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/net.pkl", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            for (i, stream) in listener.incoming().take(n).enumerate() {
                let mut stream = stream.unwrap();
                let mut start = 0;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = r.trim().trim_end_matches('-').parse().unwrap();
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let rest = &body[start..];
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                )
                .unwrap();
                let send = match (i, cut) {
                    (0, Some(c)) => &rest[..c],
                    _ => rest,
                };
                stream.write_all(send).unwrap();
            }
        });
        (url, handle)
    }

    #[test]
    fn an_interrupted_download_resumes_and_lands_whole() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("models/x/net.pkl");
        let (url, server) = serve(body.clone(), 2, Some(1_000_000));
        let e = download_url(&url, &dest).unwrap_err().to_string();
        assert!(e.contains("run again to resume"), "{e}");
        assert!(!dest.exists(), "nothing in place until complete");
        download_url(&url, &dest).unwrap();
        server.join().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert!(!dir.path().join("models/x/net.pkl.partial").exists());
        // Already there: kept, no request made.
        download_url("http://127.0.0.1:9/unreachable", &dest).unwrap();
    }
}
