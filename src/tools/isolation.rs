//! What the sandbox uses on this machine, found once by trying each plan of `confine`'s
//! layers (strongest first) on a short Python run, and running code under it.
use super::confine::NOBODY;
use super::confine::{label, Limits, Plan, RunCgroup};
use super::sandbox::{run_in, run_with, traced, Outcome, Status};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One isolation layer, whether it is active here and, if not, why.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub name: &'static str,
    pub active: bool,
    pub note: String,
}

/// What the sandbox uses on this machine: the interpreter and the layers that work.
#[derive(Debug)]
pub struct Isolation {
    pub(crate) plan: Plan,
    pub python: PathBuf,
    /// Where per-run pids cgroups are made, if the pids controller is writable.
    pub cgroup: Option<PathBuf>,
    pub layers: Vec<Layer>,
}

impl Isolation {
    /// The active layers, e.g. "netns+ro-fs+pidns+nobody+pids-cgroup+rlimits".
    pub fn label(&self) -> String {
        label(&self.plan, self.cgroup.is_some())
    }
}

/// Runs `code` as `main.py` with `python3` in the sandbox, `stdin` on its standard input.
pub fn run_python(code: &str, stdin: Option<&str>, limits: &Limits) -> Result<Outcome> {
    traced(|| {
        let iso = isolation()?;
        run_with(
            &iso.plan,
            &iso.python,
            iso.cgroup.as_deref(),
            code,
            stdin,
            limits,
        )
    })
}

/// Runs `code` in the sandbox with `dir` as its work dir (cwd, HOME, TMPDIR); files it writes
/// there persist after the run, and modules there can be imported. The code is fed to Python
/// on its standard input (`python -`), so no `main.py` is left in, or clobbers a file of, `dir`;
/// `input()` meets the end of input.
///
/// Where the sandbox drops a root caller to `nobody`, the tree under `dir` is first handed to
/// `nobody` (the code must write there, and files made since by the file tools are root's);
/// the alternative, running this dir's code as root, would give up the layer that keeps
/// root's files shut. The caller (root) can still read and write everything afterwards.
/// `nobody` must also reach `dir` by name (Python resolves imports and temp files by absolute
/// path), which a parent such as `/root` or a 0700 temp dir forbids; then the code sees `dir`
/// mounted at `/tmp` instead (ro-fs has a mount namespace for it), or, without ro-fs, the run
/// is refused saying which parent to open.
pub fn run_python_in(code: &str, dir: &Path, limits: &Limits) -> Result<Outcome> {
    traced(|| run_python_in_untraced(code, dir, limits))
}

fn run_python_in_untraced(code: &str, dir: &Path, limits: &Limits) -> Result<Outcome> {
    let iso = isolation()?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("the sandbox's work dir {} cannot be opened", dir.display()))?;
    let mut shown_at = None;
    if iso.plan.nobody {
        give_to_nobody(&dir)
            .with_context(|| format!("cannot hand {} to the sandbox's user", dir.display()))?;
        if let Some(shut) = shut_to_nobody(&dir) {
            if !iso.plan.readonly {
                bail!(
                    "the sandbox runs code as `nobody`, who cannot enter {} (on the way to the work dir {}): put the run's directory elsewhere or allow others in (chmod o+x {})",
                    shut.display(),
                    dir.display(),
                    shut.display()
                );
            }
            shown_at = Some(Path::new("/tmp"));
        }
    }
    run_in(
        &iso.plan,
        &iso.python,
        iso.cgroup.as_deref(),
        &dir,
        shown_at,
        &["-B", "-"],
        Some(code),
        limits,
    )
}

/// The first parent of `dir` that `nobody` may not search, if any.
fn shut_to_nobody(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).find_map(|p| {
        let m = p.metadata().ok()?;
        let mode = m.mode();
        let can = mode & 0o001 != 0
            || (m.uid() == NOBODY && mode & 0o100 != 0)
            || (m.gid() == NOBODY && mode & 0o010 != 0);
        (!can).then(|| p.to_path_buf())
    })
}

/// Makes `dir` and what it holds owned by `nobody`, never following a symlink (`lchown`, no
/// descent into links) and never touching a file with other hard links, which may be a host
/// file linked in.
fn give_to_nobody(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{lchown, MetadataExt};
    let meta = dir.symlink_metadata()?;
    if meta.uid() != NOBODY || meta.gid() != NOBODY {
        lchown(dir, Some(NOBODY), Some(NOBODY))?;
    }
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let meta = path.symlink_metadata()?;
        let kind = meta.file_type();
        if kind.is_dir() {
            give_to_nobody(&path)?;
        } else if kind.is_file()
            && meta.nlink() == 1
            && (meta.uid() != NOBODY || meta.gid() != NOBODY)
        {
            lchown(&path, Some(NOBODY), Some(NOBODY))?;
        }
    }
    Ok(())
}

/// The isolation this machine allows, probed on first use (a few short runs of Python).
pub fn isolation() -> Result<&'static Isolation> {
    static ISO: OnceLock<Result<Isolation, String>> = OnceLock::new();
    ISO.get_or_init(|| probe().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn probe() -> Result<Isolation> {
    let pythons = pythons()?;
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = which("unshare");
    let cgroup = pids_cgroup();
    let full = Plan {
        userns: !root,
        netns: true,
        readonly: true,
        unshare: unshare.clone(),
        nobody: root,
    };
    // Weaker plans in order; a root caller whose interpreter `nobody` cannot run (say under
    // /root) falls back to running as root.
    let mut plans = vec![
        full.clone(),
        Plan {
            unshare: None,
            ..full.clone()
        },
        Plan {
            readonly: false,
            unshare: None,
            ..full.clone()
        },
        Plan {
            userns: false,
            nobody: root,
            ..Plan::default()
        },
    ];
    if root {
        let as_root: Vec<Plan> = plans
            .iter()
            .map(|p| Plan {
                nobody: false,
                ..p.clone()
            })
            .collect();
        plans.extend(as_root);
    }
    let mut tried = Vec::new();
    for plan in &plans {
        for py in &pythons {
            let limits = Limits {
                timeout: std::time::Duration::from_secs(20),
                ..Limits::default()
            };
            match run_with(plan, py, None, "print('ok')", None, &limits) {
                Ok(o) if o.status == Status::Ok && o.stdout.trim() == "ok" => {
                    let layers = layers(plan, &unshare, &cgroup, root);
                    return Ok(Isolation {
                        plan: plan.clone(),
                        python: py.clone(),
                        cgroup,
                        layers,
                    });
                }
                Ok(o) => tried.push(format!("{}: {}", py.display(), o.reason)),
                Err(e) => tried.push(format!("{}: {e:#}", py.display())),
            }
        }
    }
    bail!(
        "the sandbox cannot run Python here: {}",
        tried.last().cloned().unwrap_or_default()
    )
}

fn layers(
    plan: &Plan,
    unshare: &Option<PathBuf>,
    cgroup: &Option<PathBuf>,
    root: bool,
) -> Vec<Layer> {
    let layer = |name, active: bool, why: &str| Layer {
        name,
        active,
        note: if active { String::new() } else { why.into() },
    };
    let ns_why = "the kernel refused the namespace (unprivileged user namespaces off?)";
    vec![
        layer(
            "userns",
            plan.userns,
            if root {
                "not needed: running as root"
            } else {
                ns_why
            },
        ),
        layer("netns", plan.netns, ns_why),
        layer("ro-fs", plan.readonly, ns_why),
        layer(
            "pidns",
            plan.unshare.is_some(),
            if unshare.is_none() {
                "`unshare` (util-linux) not found on PATH"
            } else {
                "`unshare --pid` failed here"
            },
        ),
        layer(
            "nobody",
            plan.nobody,
            if root {
                "no interpreter that uid 65534 can run: code runs as root"
            } else {
                "not needed: not running as root"
            },
        ),
        layer(
            "pids-cgroup",
            cgroup.is_some(),
            "no writable pids cgroup controller",
        ),
        layer("rlimits", true, ""),
    ]
}

/// Interpreters to try: `$CONCLAVE_PYTHON` alone if set; else the real binary behind
/// `python3` on PATH (which may be a pyenv shim that needs the caller's environment), then
/// the system's.
fn pythons() -> Result<Vec<PathBuf>> {
    if let Some(p) = std::env::var_os("CONCLAVE_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(vec![PathBuf::from(p)]);
    }
    let mut out = Vec::new();
    let real = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .output();
    if let Some(o) = real.ok().filter(|o| o.status.success()) {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if p.is_file() {
            out.push(p);
        }
    }
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        let p = PathBuf::from(p);
        if p.is_file() && !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        bail!("python3 not found: install Python 3 (e.g. `apt-get install python3`) or set CONCLAVE_PYTHON to an interpreter");
    }
    Ok(out)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A directory under which this process may make pids cgroups: cgroup v1's `pids`
/// hierarchy, or cgroup v2's root when it delegates the pids controller.
fn pids_cgroup() -> Option<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    let v2 = Path::new("/sys/fs/cgroup");
    let v2_has_pids = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
        .is_ok_and(|s| s.split_whitespace().any(|c| c == "pids"));
    let root = if v1.join("cgroup.procs").exists() {
        v1
    } else if v2_has_pids {
        v2
    } else {
        return None;
    };
    let base = root.join("conclave");
    let _ = std::fs::create_dir(&base);
    if root == v2 {
        // Children of `conclave` get pids.max only if it passes the controller down.
        std::fs::write(base.join("cgroup.subtree_control"), "+pids").ok()?;
    }
    let probe = RunCgroup::create(&base, 1).ok()?;
    drop(probe);
    Some(base)
}
