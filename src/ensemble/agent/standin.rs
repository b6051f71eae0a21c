//! Stand-ins for `tools::Workspace` and `tools::run_python_in` (API.md §2) until branch
//! `tools` lands on main; this file is deleted at that merge. Paths are confined only
//! lexically here (no symlink check), and python runs without the workspace as its cwd.
use crate::tools::{run_python, Limits, Outcome};
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("cannot make the workspace {}", root.display()))?;
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn resolve(&self, rel: &str) -> Result<PathBuf> {
        let p = Path::new(rel);
        if p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            bail!("`{rel}` is outside the workspace: give a relative path without `..`");
        }
        Ok(self.root.join(p))
    }

    pub fn read_file(&self, rel: &str) -> Result<String> {
        std::fs::read_to_string(self.resolve(rel)?).with_context(|| format!("cannot read `{rel}`"))
    }

    pub fn write_file(&self, rel: &str, content: &str) -> Result<String> {
        let p = self.resolve(rel)?;
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, content).with_context(|| format!("cannot write `{rel}`"))?;
        Ok(format!("wrote {} bytes to {rel}", content.len()))
    }

    pub fn list_dir(&self, rel: &str) -> Result<String> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(self.resolve(rel)?)? {
            let e = e?;
            let slash = if e.file_type()?.is_dir() { "/" } else { "" };
            names.push(format!("{}{slash}", e.file_name().to_string_lossy()));
        }
        names.sort();
        Ok(names.join("\n"))
    }
}

pub fn run_python_in(code: &str, _dir: &Path, limits: &Limits) -> Result<Outcome> {
    run_python(code, None, limits)
}
