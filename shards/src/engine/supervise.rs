//! Supervision: no engine thread dies silently. The policy is **fail fast**: a panic on any
//! engine thread (a data shard, control, discovery, a lookup, or a user's `BookHandler`, which
//! runs on its data shard) is logged with the thread's name and reason and reported to the
//! engine's [`Supervisor`]; the binary then exits non-zero at once so that systemd or
//! Kubernetes restarts it from a clean state. Restarting a shard in place would have to rebuild
//! its books, connections and registry view while the rest runs on — a second, rarely tested
//! code path — and a half-dead process that answers `/health` is worse than a restart.
//!
//! The panic hook is process-wide, but it reports only threads that [`enter`]ed a supervisor
//! (a thread-local), so several engines (or test threads) in one process do not mix.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

/// A thread that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub thread: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread {} died: {}", self.thread, self.reason)
    }
}

/// Collects the failures of one engine's threads.
#[derive(Clone)]
pub struct Supervisor {
    tx: flume::Sender<Failure>,
    first: Arc<Mutex<Option<Failure>>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Supervisor")
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Supervisor>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

impl Supervisor {
    /// A supervisor and the receiver its failures arrive on.
    pub fn new() -> (Supervisor, flume::Receiver<Failure>) {
        install_hook();
        let (tx, rx) = flume::unbounded();
        (Supervisor { tx, first: Arc::new(Mutex::new(None)) }, rx)
    }

    /// Reports a failure that is not a panic (e.g. a thread that ended without its result).
    pub fn report(&self, thread: &str, reason: impl Into<String>) {
        let failure = Failure { thread: thread.to_owned(), reason: reason.into() };
        tracing::error!(thread = %failure.thread, reason = %failure.reason, "engine thread died");
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| failure.clone());
        }
        let _ = self.tx.send(failure);
    }

    /// The first failure, if any.
    pub fn first_failure(&self) -> Option<Failure> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
}

/// Marks the calling thread as supervised by `sup`: a panic on it is reported there.
pub fn enter(sup: Supervisor) {
    CURRENT.with(|c| *c.borrow_mut() = Some(sup));
}

/// The supervisor of the calling thread, if it has one.
pub fn current() -> Option<Supervisor> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Spawns a named std thread supervised like the calling thread.
pub fn spawn_thread<F: FnOnce() + Send + 'static>(
    name: &str,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let sup = current();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        if let Some(sup) = sup {
            enter(sup);
        }
        f()
    })
}

fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let Some(sup) =
                CURRENT.try_with(|c| c.try_borrow().ok().and_then(|s| s.clone())).ok().flatten()
            else {
                return;
            };
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            sup.report(name, format!("{msg}{}", at.unwrap_or_default()));
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_a_supervised_thread_is_reported_with_its_name() {
        let (sup, rx) = Supervisor::new();
        let h = std::thread::Builder::new()
            .name("worker-7".into())
            .spawn(move || {
                enter(sup);
                panic!("boom");
            })
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        assert!(h.join().is_err());
        let f = rx.recv_timeout(std::time::Duration::from_secs(5));
        let f = f.unwrap_or_else(|e| panic!("no failure reported: {e}"));
        assert_eq!(f.thread, "worker-7");
        assert!(f.reason.starts_with("boom at "), "{}", f.reason);
    }

    #[test]
    fn a_panic_on_an_unsupervised_thread_is_not_reported() {
        let (_sup, rx) = Supervisor::new();
        let h = std::thread::spawn(|| panic!("not ours"));
        assert!(h.join().is_err());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn spawned_threads_inherit_the_supervisor() {
        let (sup, rx) = Supervisor::new();
        let outer = std::thread::spawn(move || {
            enter(sup);
            let inner =
                spawn_thread("discovery", || panic!("tls")).unwrap_or_else(|e| panic!("{e}"));
            assert!(inner.join().is_err());
        });
        assert!(outer.join().is_ok());
        let f =
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.thread, "discovery");
    }
}
