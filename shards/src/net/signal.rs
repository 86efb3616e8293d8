//! `Shutdown`: a single-executor, many-waiter stop signal. Servers and connection tasks race their
//! waits against it, so it must wake every waiter at once and must not grow with each poll.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A stop signal shared by clones on one executor. Once triggered it stays triggered.
///
/// To stop from another thread, forward a message (a flume or glommio shared channel) to a local
/// task that calls [`Shutdown::trigger`]: the signal itself is deliberately `!Send`.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    // A slot per live `Wait` future, reused after it is dropped: re-polling a wait that is raced
    // against a busy read must overwrite its waker, not add another.
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal and wakes every waiter. Idempotent.
    pub fn trigger(&self) {
        self.inner.fired.set(true);
        let wakers: Vec<Waker> =
            self.inner.slots.borrow_mut().iter_mut().filter_map(Option::take).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`Shutdown::trigger`] has been called.
    pub fn is_triggered(&self) -> bool {
        self.inner.fired.get()
    }

    /// A future that completes once the signal fires (at once if it already has).
    pub fn wait(&self) -> Wait {
        Wait { inner: Rc::clone(&self.inner), slot: None }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").field("triggered", &self.is_triggered()).finish()
    }
}

/// Future returned by [`Shutdown::wait`].
pub struct Wait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.inner.fired.get() {
            return Poll::Ready(());
        }
        let mut slots = this.inner.slots.borrow_mut();
        match this.slot {
            Some(i) => match slots.get_mut(i) {
                Some(Some(w)) if w.will_wake(cx.waker()) => {}
                Some(s) => *s = Some(cx.waker().clone()),
                None => {}
            },
            None => {
                let i = match this.inner.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        slots.push(None);
                        slots.len() - 1
                    }
                };
                if let Some(s) = slots.get_mut(i) {
                    *s = Some(cx.waker().clone());
                }
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            if let Some(s) = self.inner.slots.borrow_mut().get_mut(i) {
                *s = None;
            }
            self.inner.free.borrow_mut().push(i);
        }
    }
}
