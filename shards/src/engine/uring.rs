//! Can this process use io_uring? glommio needs it for every executor, and where it is
//! missing the failure otherwise surfaces as a thread dying with a bare errno. The engine asks
//! once at start-up, before any executor is spawned, by building (and dropping) one glommio
//! executor on a short-lived thread, and turns a refusal into one message that names the cause
//! and the fix.

use std::fmt;

/// Why io_uring is unavailable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// `RLIMIT_MEMLOCK` below what glommio asks for (bytes: have, need).
    Memlock { have: u64, need: u64 },
    /// `kernel.io_uring_disabled` is 1 or 2.
    DisabledBySysctl(u8),
    /// `io_uring_setup` refused with EPERM: a seccomp filter (Docker's and containerd's default
    /// profiles block the io_uring calls) or a security module.
    Refused,
    /// `io_uring_setup` does not exist (ENOSYS): a kernel without io_uring, gVisor, or a
    /// seccomp filter that answers ENOSYS.
    Missing,
    /// Another error from the ring's set-up.
    Other(String),
}

/// io_uring is unavailable; [`fmt::Display`] is the operator's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoUringUnavailable {
    pub cause: Cause,
}

impl std::error::Error for IoUringUnavailable {}

impl fmt::Display for IoUringUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CONTAINER: &str = "in Docker run with `--security-opt seccomp=deploy/seccomp.json` \
             (Docker's default profile plus io_uring_setup/enter/register), in Kubernetes set \
             the pod's seccompProfile to a profile that allows them";
        match &self.cause {
            Cause::Memlock { have, need } => write!(
                f,
                "io_uring unavailable: the memlock limit (RLIMIT_MEMLOCK) is {have} bytes, \
                 glommio needs at least {need}; raise it (`ulimit -l {}` in the shell, \
                 `LimitMEMLOCK=` in a systemd unit, `--ulimit memlock=-1` for docker run)",
                need / 1024
            ),
            Cause::DisabledBySysctl(v) => write!(
                f,
                "io_uring unavailable: the kernel has io_uring disabled \
                 (kernel.io_uring_disabled = {v}); set `sysctl kernel.io_uring_disabled=0`{}",
                if *v == 1 { " or add this user to kernel.io_uring_group" } else { "" }
            ),
            Cause::Refused => write!(
                f,
                "io_uring unavailable: io_uring_setup was refused (EPERM), usually by a \
                 seccomp filter: {CONTAINER}; outside containers check \
                 `sysctl kernel.io_uring_disabled` and security modules (SELinux, AppArmor)"
            ),
            Cause::Missing => write!(
                f,
                "io_uring unavailable: io_uring_setup does not exist (ENOSYS): the kernel is \
                 older than 5.8 or built without io_uring, or a sandbox (gVisor, a seccomp \
                 filter) hides it; {CONTAINER}"
            ),
            Cause::Other(why) => write!(
                f,
                "io_uring unavailable: {why}; check `ulimit -l` (memlock), \
                 `sysctl kernel.io_uring_disabled`, and the container's seccomp profile \
                 (deploy/seccomp.json)"
            ),
        }
    }
}

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;
const ENOMEM: i32 = 12;

/// Maps a ring set-up failure (its errno, if any, and its text) and the sysctl's value to a
/// cause. A set sysctl explains EPERM better than seccomp does.
pub fn classify(errno: Option<i32>, text: &str, sysctl: Option<u8>) -> Cause {
    match (errno, sysctl) {
        (Some(EPERM), Some(v @ 1..=2)) => Cause::DisabledBySysctl(v),
        (Some(EPERM), _) => Cause::Refused,
        (Some(ENOSYS), _) => Cause::Missing,
        (Some(ENOMEM), _) => Cause::Other(format!(
            "{text} (ENOMEM: locked memory for the ring; raise `ulimit -l` or lower \
             layout.io_memory_kib)"
        )),
        _ => Cause::Other(text.to_owned()),
    }
}

/// `kernel.io_uring_disabled` (Linux 6.6+; absent before: `None`).
fn sysctl_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?.trim().parse().ok()
}

fn of_glommio(e: &glommio::GlommioError<()>) -> Cause {
    use glommio::{GlommioError, ReactorErrorKind};
    match e {
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(have, need)) => {
            Cause::Memlock { have: *have, need: *need }
        }
        GlommioError::IoError(io) | GlommioError::EnhancedIoError { source: io, .. } => {
            let text = io.to_string();
            memlock_of_text(&text)
                .unwrap_or_else(|| classify(io.raw_os_error(), &text, sysctl_disabled()))
        }
        other => Cause::Other(other.to_string()),
    }
}

/// glommio's memlock refusal after its conversion to `io::Error` on the way out of the
/// executor: the text `MemLockLimit(HAVE/NEED)`.
fn memlock_of_text(text: &str) -> Option<Cause> {
    let inner = text.split_once("MemLockLimit(")?.1.split_once(')')?.0;
    let (have, need) = inner.split_once('/')?;
    Some(Cause::Memlock { have: have.trim().parse().ok()?, need: need.trim().parse().ok()? })
}

/// Builds one executor with `io_memory` bytes of registered memory, as the engine's will be,
/// and drops it.
pub fn probe(io_memory: usize) -> Result<(), IoUringUnavailable> {
    let attempt = std::thread::Builder::new().name("io-uring-probe".into()).spawn(move || {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(io_memory)
            .make()
            .map(drop)
            .map_err(|e| of_glommio(&e))
    });
    let joined = match attempt {
        Ok(handle) => handle.join(),
        Err(e) => return Err(IoUringUnavailable { cause: Cause::Other(e.to_string()) }),
    };
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(cause)) => Err(IoUringUnavailable { cause }),
        Err(_) => {
            Err(IoUringUnavailable { cause: Cause::Other("the executor probe panicked".into()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_sysctl_map_to_the_cause_and_its_fix() {
        let msg = |c: Cause| IoUringUnavailable { cause: c }.to_string();
        assert_eq!(classify(Some(EPERM), "x", Some(0)), Cause::Refused);
        assert_eq!(classify(Some(EPERM), "x", None), Cause::Refused);
        assert_eq!(classify(Some(EPERM), "x", Some(2)), Cause::DisabledBySysctl(2));
        assert_eq!(classify(Some(ENOSYS), "x", Some(0)), Cause::Missing);
        assert!(matches!(classify(Some(ENOMEM), "x", None), Cause::Other(w) if w.contains("-l")));
        assert_eq!(classify(None, "odd", None), Cause::Other("odd".into()));
        assert_eq!(
            memlock_of_text("MemLockLimit(0/524288)"),
            Some(Cause::Memlock { have: 0, need: 524_288 })
        );
        assert_eq!(memlock_of_text("MemLockLimit(x/1)"), None);
        assert_eq!(memlock_of_text("other"), None);

        assert!(msg(Cause::Refused).contains("deploy/seccomp.json"));
        assert!(msg(Cause::Missing).contains("seccomp"));
        assert!(msg(Cause::DisabledBySysctl(1)).contains("kernel.io_uring_disabled=0"));
        assert!(msg(Cause::DisabledBySysctl(1)).contains("io_uring_group"));
        assert!(!msg(Cause::DisabledBySysctl(2)).contains("io_uring_group"));
        let memlock = msg(Cause::Memlock { have: 0, need: 512 * 1024 });
        assert!(memlock.contains("ulimit -l 512") && memlock.contains("LimitMEMLOCK"), "{memlock}");
        for c in [Cause::Refused, Cause::Missing, Cause::Other("x".into())] {
            assert!(!msg(c).contains('\n'), "one line");
        }
    }

    #[test]
    fn the_probe_succeeds_where_the_engine_runs() {
        // The test suite starts engines on this machine, so io_uring works here.
        assert_eq!(probe(256 << 10), Ok(()));
    }
}
