//! Confining a child process: the layers a run may use (which of them this machine allows is
//! found by `isolation`, which tries them).
//!
//! Layers, strongest first:
//! - `userns`: a user namespace, for callers that are not root (it grants the rights that the
//!   namespaces below need);
//! - `netns`: a new network namespace holding only a downed loopback: no network at all;
//! - `ro-fs`: a mount namespace in which every mount is read-only except the work dir;
//! - `pidns`: a PID namespace (util-linux `unshare --pid --fork --kill-child --mount-proc`): the
//!   code sees only its own processes, and they all die with its first one;
//! - `nobody`: a root caller runs the code as uid/gid 65534 with no capabilities, so
//!   RLIMIT_NPROC holds (the kernel does not enforce it for root) and root's files stay shut;
//! - `pids-cgroup`: one cgroup per run with `pids.max`, where the pids controller is writable;
//!   it caps a fork bomb whoever the code runs as;
//! - `rlimits`: CPU time, address space, file size, process count, no core files: always.
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// uid and gid of `nobody` on Debian and most Linux systems.
pub(crate) const NOBODY: u32 = 65534;

/// What one run may use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time.
    pub timeout: Duration,
    /// CPU time of each process (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Address space of each process (RLIMIT_AS).
    pub memory_mb: u64,
    /// Bytes kept of stdout and of stderr; more stops the run.
    pub max_output_bytes: usize,
    /// Processes and threads at once.
    pub max_processes: u64,
    /// Largest file the code may write (RLIMIT_FSIZE).
    pub file_size_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_mb: 512,
            max_output_bytes: 1 << 20,
            max_processes: 64,
            file_size_mb: 16,
        }
    }
}

/// Which layers a run uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub userns: bool,
    pub netns: bool,
    pub readonly: bool,
    /// The `unshare` binary that wraps the code in a PID namespace.
    pub unshare: Option<PathBuf>,
    pub nobody: bool,
}

/// The layers of a run, joined by "+".
pub(crate) fn label(plan: &Plan, cgroup: bool) -> String {
    let layers = [
        ("userns", plan.userns),
        ("netns", plan.netns),
        ("ro-fs", plan.readonly),
        ("pidns", plan.unshare.is_some()),
        ("nobody", plan.nobody),
        ("pids-cgroup", cgroup),
        ("rlimits", true),
    ];
    let names: Vec<&str> = layers.iter().filter(|l| l.1).map(|l| l.0).collect();
    names.join("+")
}

/// One run's pids cgroup; dropping it kills what is left inside and removes it.
pub(crate) struct RunCgroup {
    dir: PathBuf,
}

impl RunCgroup {
    pub fn create(base: &Path, max_pids: u64) -> io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = base.join(format!("run-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let cg = Self { dir };
        std::fs::write(cg.dir.join("pids.max"), max_pids.to_string())?;
        Ok(cg)
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// SIGKILL to every process in the cgroup, until it is empty and removed (or ~1 s passed).
    pub fn kill_all(&self) -> bool {
        for _ in 0..100 {
            let pids = std::fs::read_to_string(self.procs()).unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if !self.kill_all() {
            tracing::warn!("could not remove sandbox cgroup {}", self.dir.display());
        }
    }
}

/// Everything the child does between fork and exec, prepared before the fork: after it only
/// async-signal-safe calls are allowed, so nothing here allocates.
pub(crate) struct Confine {
    cgroup_procs: Option<CString>,
    /// `/proc/self/{setgroups,uid_map,gid_map}` and what to write there.
    user_maps: Option<[(CString, CString); 3]>,
    unshare_flags: libc::c_int,
    workdir: CString,
    /// Where the work dir is mounted again for the code to see, if not at its own path.
    shown_at: Option<CString>,
    /// Mount points to make read-only, with the flags they already have.
    remount: Vec<(CString, libc::c_ulong)>,
    drop_to_nobody: bool,
    cpu_seconds: u64,
    memory_bytes: u64,
    file_bytes: u64,
    processes: u64,
}

impl Confine {
    pub fn new(
        plan: &Plan,
        workdir: &Path,
        shown_at: Option<&Path>,
        limits: &Limits,
        cgroup: Option<&RunCgroup>,
    ) -> Result<Self> {
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path with a NUL");
        let user_maps = if plan.userns {
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            let c = |s: String| CString::new(s).expect("no NUL");
            Some([
                (c("/proc/self/setgroups".into()), c("deny".into())),
                (c("/proc/self/uid_map".into()), c(format!("0 {uid} 1"))),
                (c("/proc/self/gid_map".into()), c(format!("0 {gid} 1"))),
            ])
        } else {
            None
        };
        let mut flags = 0;
        if plan.netns {
            flags |= libc::CLONE_NEWNET;
        }
        if plan.readonly {
            flags |= libc::CLONE_NEWNS;
        }
        let remount = if plan.readonly {
            mounts()?
                .into_iter()
                .map(|(p, f)| Ok((cstr(&p)?, f)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        // RLIMIT_NPROC counts every process of the user, concurrent runs' too, so it is the
        // cap only where the run has no pids cgroup of its own.
        let uid = if plan.nobody {
            NOBODY
        } else {
            unsafe { libc::getuid() }
        };
        let processes = match cgroup {
            Some(_) => libc::RLIM_INFINITY,
            None => processes_of(uid) + limits.max_processes,
        };
        Ok(Self {
            cgroup_procs: cgroup.map(|c| cstr(&c.procs())).transpose()?,
            user_maps,
            unshare_flags: flags,
            workdir: cstr(workdir)?,
            shown_at: shown_at.map(cstr).transpose()?,
            remount,
            drop_to_nobody: plan.nobody && plan.unshare.is_none(),
            cpu_seconds: limits.cpu_seconds.max(1),
            memory_bytes: limits.memory_mb.saturating_mul(1 << 20),
            file_bytes: limits.file_size_mb.saturating_mul(1 << 20),
            processes,
        })
    }

    /// Runs in the child between fork and exec.
    ///
    /// # Safety
    /// Only async-signal-safe system calls; no allocation.
    pub unsafe fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // Die with the thread that started us, and lead a new session and process group so
        // that one kill(-pgid) reaches every descendant that stays in it.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::setsid())?;
        if let Some(procs) = &self.cgroup_procs {
            write_file(procs, b"0")?; // "0" moves the writing process itself
        }
        if let Some(maps) = &self.user_maps {
            check(libc::unshare(libc::CLONE_NEWUSER))?;
            for (path, text) in maps {
                write_file(path, text.as_bytes())?;
            }
        }
        if self.unshare_flags != 0 {
            check(libc::unshare(self.unshare_flags))?;
        }
        if !self.remount.is_empty() {
            self.make_readonly()?;
        }
        // Soft limit `soft`, hard limit `hard`, neither above the hard limit we already have
        // (raising it needs CAP_SYS_RESOURCE, which even root may lack).
        let limit = |res, soft: u64, hard: u64| {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::getrlimit(res, &mut r))?;
            let max = r.rlim_max;
            r.rlim_cur = soft.min(max);
            r.rlim_max = hard.min(max);
            check(libc::setrlimit(res, &r))
        };
        // The hard CPU limit is one second above the soft one: SIGXCPU first, then SIGKILL.
        limit(libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)?;
        limit(libc::RLIMIT_AS, self.memory_bytes, self.memory_bytes)?;
        limit(libc::RLIMIT_FSIZE, self.file_bytes, self.file_bytes)?;
        limit(libc::RLIMIT_NPROC, self.processes, self.processes)?;
        limit(libc::RLIMIT_CORE, 0, 0)?;
        if self.drop_to_nobody {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(NOBODY))?;
            check(libc::setuid(NOBODY))?;
        }
        // No setuid binary may give the code back what was taken.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        Ok(())
    }

    unsafe fn make_readonly(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        let null = std::ptr::null();
        // Private first, so that nothing done here propagates back to the host's mounts.
        check(libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        // The work dir becomes a mount of its own, so it stays writable below.
        let w = self.workdir.as_ptr();
        check(libc::mount(w, w, null, libc::MS_BIND, std::ptr::null()))?;
        for (i, (path, flags)) in self.remount.iter().enumerate() {
            // MS_BIND with MS_REMOUNT changes this mount's flags only, never the filesystem's
            // (which would make the host's copy read-only too).
            let r = libc::mount(
                null,
                path.as_ptr(),
                null,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
                std::ptr::null(),
            );
            // The root mount must go read-only; special mounts that refuse are left as they are.
            if i == 0 {
                check(r)?;
            }
        }
        // Mounted last, on top of the read-only tree, so it stays writable.
        if let Some(at) = &self.shown_at {
            check(libc::mount(
                w,
                at.as_ptr(),
                null,
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            return check(libc::chdir(at.as_ptr()));
        }
        // The cwd set before this still points below the bind mount: enter the new one.
        check(libc::chdir(w))
    }
}

unsafe fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    let err = io::Error::last_os_error();
    libc::close(fd);
    if n != data.len() as isize {
        return Err(err);
    }
    Ok(())
}

/// Mount points and their per-mount flags from /proc/self/mountinfo, "/" first.
fn mounts() -> Result<Vec<(PathBuf, libc::c_ulong)>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut out: Vec<(PathBuf, libc::c_ulong)> = Vec::new();
    for line in info.lines() {
        // proc(5): "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw"; the
        // 5th field is the mount point (octal escapes), the 6th its per-mount options.
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 6 {
            continue;
        }
        let mut flags = 0;
        for opt in f[5].split(',') {
            flags |= match opt {
                "nosuid" => libc::MS_NOSUID,
                "nodev" => libc::MS_NODEV,
                "noexec" => libc::MS_NOEXEC,
                "noatime" => libc::MS_NOATIME,
                "nodiratime" => libc::MS_NODIRATIME,
                "relatime" => libc::MS_RELATIME,
                _ => 0,
            };
        }
        let path = PathBuf::from(unescape(f[4]));
        if !out.iter().any(|(p, _)| *p == path) {
            out.push((path, flags));
        }
    }
    out.sort_by_key(|(p, _)| p != Path::new("/"));
    if out.first().map(|(p, _)| p.as_path()) != Some(Path::new("/")) {
        bail!("no root mount in /proc/self/mountinfo");
    }
    Ok(out)
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How many processes (threads included, as RLIMIT_NPROC counts them) `uid` runs now.
fn processes_of(uid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        if field("Uid:") == Some(uid as u64) {
            n += field("Threads:").unwrap_or(1);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_and_root_first() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\\y\0"), r"/x\\y\0");
        let m = mounts().unwrap();
        assert_eq!(m[0].0, Path::new("/"));
    }
}
