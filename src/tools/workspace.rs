//! A directory an agent's file tools are confined to: every path it names is relative to the
//! root, and one that leaves it (absolute, `..` past the root, a symlink out) is refused with a
//! message the model can read.
//!
//! Race (TOCTOU): `resolve` checks the path, then the caller opens it; code running meanwhile
//! (the sandbox shares this directory) could swap a checked directory for a symlink out. So
//! every open is checked again afterwards on what was really opened (its `/proc/self/fd` link
//! must lie under the root) and refused otherwise. The one thing this cannot undo is a new,
//! empty file that `write_file` created outside in such a race before the check refused to
//! write into it; the sandboxed code runs only while a `python` call runs, and the agent runs
//! its calls one at a time, so the race needs a run that outlives its call, which the
//! sandbox's pid namespace or cgroup kills.
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

/// The largest file `read_file` returns.
pub const MAX_READ_BYTES: u64 = 256 * 1024;

/// A directory that file tools are confined to.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Canonical: no symlinks, no `..`.
    root: PathBuf,
}

impl Workspace {
    /// Opens (creating if needed) a workspace directory.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot make the workspace {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("cannot open the workspace {}", root.display()))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path inside the workspace, or an error saying why it is refused: absolute paths,
    /// `..` that leaves the root, and symlinks (anywhere on the path) that lead outside.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        if rel.contains('\0') {
            bail!("path {rel:?} is refused: it contains a NUL byte");
        }
        let path = Path::new(rel);
        if path.is_absolute() {
            bail!("path {rel:?} is refused: absolute paths are not allowed; name a path relative to the workspace, e.g. \"out/result.txt\"");
        }
        // `..` is resolved by name, not by following links: the path opened is the one checked.
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p),
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        bail!("path {rel:?} is refused: `..` leads out of the workspace");
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    bail!("path {rel:?} is refused: absolute paths are not allowed")
                }
            }
        }
        let mut at = self.root.clone();
        let mut exists = true;
        for p in parts {
            at.push(p);
            // Past a name that does not exist yet (a file to write) nothing can be a link.
            let Some(meta) = exists.then(|| at.symlink_metadata().ok()).flatten() else {
                exists = false;
                continue;
            };
            if meta.file_type().is_symlink() {
                let shown = at.strip_prefix(&self.root).unwrap_or(&at).display();
                match at.canonicalize() {
                    Ok(target) if target.starts_with(&self.root) => {}
                    Ok(_) => bail!(
                        "path {rel:?} is refused: {shown} is a symlink that leads out of the workspace"
                    ),
                    Err(_) => bail!(
                        "path {rel:?} is refused: {shown} is a symlink to nothing (a write would create its target, which may lie outside)"
                    ),
                }
            }
        }
        Ok(at)
    }

    /// The file's text; files over `MAX_READ_BYTES` and non-UTF-8 files are refused.
    pub fn read_file(&self, rel: &str) -> Result<String> {
        let path = self.resolve(rel)?;
        if path.is_dir() {
            bail!("{rel:?} is a directory: use list_dir to see what it holds");
        }
        let file = File::open(&path).with_context(|| format!("cannot read {rel:?}"))?;
        self.check_opened(&file, rel)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut bytes = Vec::new();
        // `take` bounds a file that grows after the size check too.
        file.take(MAX_READ_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {rel:?}"))?;
        if len > MAX_READ_BYTES || bytes.len() as u64 > MAX_READ_BYTES {
            bail!(
                "{rel:?} is {} bytes, over the {} KiB that read_file returns: read parts of it with python",
                len.max(bytes.len() as u64),
                MAX_READ_BYTES / 1024
            );
        }
        String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!("{rel:?} is not UTF-8 text (binary?): inspect it with python")
        })
    }

    /// Writes `content` to the file (replacing it), making parent dirs; "wrote N bytes to REL".
    pub fn write_file(&self, rel: &str, content: &str) -> Result<String> {
        let path = self.resolve(rel)?;
        if path == self.root || rel.ends_with('/') {
            bail!("{rel:?} names a directory: write_file needs a file path, e.g. \"notes.txt\"");
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot make the directories of {rel:?}"))?;
            // A directory made just now through a swapped-in link would show here.
            self.resolve(rel)?;
        }
        // No truncation before the opened file is known to lie inside.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot write {rel:?}"))?;
        self.check_opened(&file, rel)?;
        file.set_len(0)
            .and_then(|_| file.write_all(content.as_bytes()))
            .with_context(|| format!("cannot write {rel:?}"))?;
        Ok(format!("wrote {} bytes to {rel}", content.len()))
    }

    /// The directory's entries, sorted, one per line; directories end in '/'.
    pub fn list_dir(&self, rel: &str) -> Result<String> {
        let path = self.resolve(rel)?;
        let dir = File::open(&path).with_context(|| format!("cannot list {rel:?}"))?;
        self.check_opened(&dir, rel)?;
        let mut names = Vec::new();
        for e in std::fs::read_dir(&path).with_context(|| format!("cannot list {rel:?}"))? {
            let e = e.with_context(|| format!("cannot list {rel:?}"))?;
            let mut name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                name.push('/');
            }
            names.push(name);
        }
        names.sort();
        Ok(names.join("\n"))
    }

    /// Refuses an opened file that does not lie under the root (see the race in the module
    /// comment): the kernel's own name for it, `/proc/self/fd/N`, says where it really is.
    fn check_opened(&self, file: &File, rel: &str) -> Result<()> {
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .with_context(|| format!("cannot tell where {rel:?} lies"))?;
        if !real.starts_with(&self.root) {
            bail!("path {rel:?} is refused: it leads out of the workspace (it changed while being opened)");
        }
        Ok(())
    }
}
