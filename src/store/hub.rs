//! Models from the Hugging Face hub: `hf:ORG/REPO[:QUANT|FILE]`, as llama-server's `-hf`.
//!
//! Downloads go through hf-hub into its standard cache (`$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), honouring `HF_ENDPOINT` and `HF_TOKEN`. hf-hub resumes an
//! interrupted download from its `.part` file with a Range request, but does not check what it
//! wrote, so the blob's sha256 is checked here against the LFS oid the hub gave as its ETag
//! (hf-hub names the blob after it, the hub's standard cache layout).
use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo};
use std::fs;
use std::path::{Path, PathBuf};

/// The prefix that marks a model spec as a hub model.
pub const PREFIX: &str = "hf:";

/// Retries of a broken download; each one resumes where the last stopped.
const RETRIES: usize = 3;

/// A parsed `ORG/REPO[:QUANT|FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    pub repo: String,
    /// A quant tag (`Q4_K_M`) or a file name (`x.Q4_K_M.gguf`); `None` picks the repo's one GGUF.
    pub pick: Option<String>,
}

impl HubSpec {
    /// Parses what follows `hf:`.
    pub fn parse(rest: &str) -> Result<Self> {
        let (repo, pick) = match rest.split_once(':') {
            Some((repo, pick)) => (repo, Some(pick.to_string())),
            None => (rest, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) || pick.as_deref() == Some("") {
            bail!("bad hub model '{PREFIX}{rest}': write {PREFIX}ORG/REPO, {PREFIX}ORG/REPO:QUANT or {PREFIX}ORG/REPO:FILE.gguf");
        }
        Ok(Self {
            repo: repo.to_string(),
            pick,
        })
    }

    /// The GGUF file this spec names among a repo's `files`.
    pub fn choose(&self, files: &[String]) -> Result<String> {
        let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
        let listing = || {
            if ggufs.is_empty() {
                "none".to_string()
            } else {
                ggufs
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let found: Vec<&&String> = match &self.pick {
            Some(file) if file.ends_with(".gguf") => ggufs.iter().filter(|f| **f == file).collect(),
            Some(tag) => {
                let tag = tag.to_lowercase();
                ggufs
                    .iter()
                    .filter(|f| f.to_lowercase().contains(&tag))
                    .collect()
            }
            None if ggufs.len() == 1 => ggufs.iter().collect(),
            None => ggufs
                .iter()
                .filter(|f| f.to_lowercase().contains("q4_k_m"))
                .collect(),
        };
        match (found.as_slice(), &self.pick) {
            ([one], _) => Ok(one.to_string()),
            ([], Some(pick)) => bail!(
                "no GGUF file in {} matches '{pick}'; its GGUF files: {}",
                self.repo,
                listing()
            ),
            ([], None) if ggufs.is_empty() => bail!("{} has no GGUF file", self.repo),
            ([], None) => bail!(
                "{} has several GGUF files and none is Q4_K_M; name one as {PREFIX}{}:QUANT or \
                 {PREFIX}{}:FILE.gguf: {}",
                self.repo,
                self.repo,
                self.repo,
                listing()
            ),
            (_, pick) => bail!(
                "several GGUF files in {} match '{}'; name one as {PREFIX}{}:FILE.gguf: {}",
                self.repo,
                pick.as_deref().unwrap_or("Q4_K_M"),
                self.repo,
                listing()
            ),
        }
    }
}

/// The local file of hub model `rest` (what follows `hf:`): from the cache when it is there,
/// else downloaded (only when `download` is set). With the hub unreachable, the cache alone.
pub fn resolve(rest: &str, download: bool) -> Result<PathBuf> {
    let spec = HubSpec::parse(rest)?;
    let cache = Cache::from_env();
    let api = ApiBuilder::from_env()
        .with_token(token(&cache))
        .with_retries(RETRIES)
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    let repo = api.model(spec.repo.clone());
    let files = match repo.info() {
        Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).collect(),
        Err(online) => match cached_files(&cache, &spec.repo) {
            Some(files) => {
                eprintln!("the hub is unreachable ({online}); using the cached files");
                files
            }
            None => {
                return Err(online).with_context(|| {
                    format!(
                        "cannot list {} on the hub ({}) and it is not in the cache {}; check the \
                         network, HF_ENDPOINT and HF_TOKEN",
                        spec.repo,
                        endpoint(),
                        cache.path().display()
                    )
                })
            }
        },
    };
    let file = spec.choose(&files)?;
    if let Some(path) = cache.model(spec.repo.clone()).get(&file) {
        return Ok(path);
    }
    if !download {
        bail!(
            "hub model {PREFIX}{rest} is not downloaded yet; run `conclave ask --model {PREFIX}{rest} …` once"
        );
    }
    eprintln!("downloading {file} from {} ({}) …", spec.repo, endpoint());
    let path = repo.download(&file).with_context(|| {
        format!(
            "cannot download {file} from {} ({}); run again to resume, and check the network, \
             HF_ENDPOINT and HF_TOKEN",
            spec.repo,
            endpoint()
        )
    })?;
    verify(&repo, &path, &file)?;
    Ok(path)
}

/// `HF_TOKEN`, else the token file hf-hub reads (`huggingface-cli login`).
fn token(cache: &Cache) -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| cache.token())
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string())
}

/// The files of the cached snapshot `refs/main` points at, if any.
fn cached_files(cache: &Cache, repo: &str) -> Option<Vec<String>> {
    let dir = cache
        .path()
        .join(Repo::model(repo.to_string()).folder_name());
    let commit = fs::read_to_string(dir.join("refs/main")).ok()?;
    let snapshot = dir.join("snapshots").join(commit.trim());
    let files = fs::read_dir(snapshot)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    Some(files)
}

/// Checks the downloaded blob against the sha256 the hub named it by; a mismatch removes it.
fn verify(repo: &ApiRepo, pointer: &Path, file: &str) -> Result<()> {
    let blob = fs::canonicalize(pointer)
        .with_context(|| format!("cannot follow {}", pointer.display()))?;
    let expected = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    // Only LFS files carry a sha256 ETag (a GGUF always is one); a git blob's is a sha1.
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        tracing::warn!("{file}: the hub gave no sha256 (ETag {expected}); not verified");
        return Ok(());
    }
    let actual = super::digest::sha256_file(&blob)?;
    if actual != expected {
        let _ = fs::remove_file(pointer);
        let _ = fs::remove_file(&blob);
        bail!(
            "sha256 mismatch for {file} from {}: the hub says {expected}, the downloaded bytes \
             hash to {actual}; the file was removed — run again to download it afresh, and if \
             it repeats, the server at HF_ENDPOINT serves wrong bytes",
            repo.url(file)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<String> {
        ["README.md", "m.Q4_K_M.gguf", "m.Q8_0.gguf"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn picks_by_tag_file_or_default() {
        let pick = |s: &str| HubSpec::parse(s).unwrap().choose(&files());
        assert_eq!(pick("o/r:q8_0").unwrap(), "m.Q8_0.gguf");
        assert_eq!(pick("o/r:m.Q8_0.gguf").unwrap(), "m.Q8_0.gguf");
        assert_eq!(pick("o/r").unwrap(), "m.Q4_K_M.gguf");
        let err = pick("o/r:Q5_K").unwrap_err().to_string();
        assert!(err.contains("m.Q4_K_M.gguf, m.Q8_0.gguf"), "{err}");
        assert!(HubSpec::parse("justrepo").is_err());
    }
}
