//! A waker for futures a task drives inline, which swallows the wake-ups the
//! task causes itself while it is polling them.
//!
//! The request's task polls its pooled upstream connection directly (see
//! `pool`). Handing the request to hyper's connection wakes the connection's
//! channel, and the connection handing back the response wakes the request's
//! oneshot — both registered by this same task. Each such wake-up makes the
//! scheduler poll the whole connection stack again for nothing: four polls
//! per proxied request where two do the work. With this waker a wake-up that
//! arrives while the task is inside [`SelfWake::poll`] only asks for another
//! turn of the loop there; wake-ups from outside (socket readiness) reach the
//! task as usual.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Polls past this many self-wake-ups in one call hand the rest to the
/// scheduler, so a future that wakes itself forever cannot starve others.
const MAX_INLINE_REPOLLS: usize = 4;

/// Set while the task is inside `poll` or `quiet`.
const POLLING: u8 = 1;
/// Set by a wake-up that arrived while `POLLING` was set.
const WOKEN: u8 = 2;

/// Both flags live in one word, so a wake-up racing with the end of a poll
/// (from the I/O driver on another worker thread) either lands before the
/// poll's final swap, which sees it, or after, when it wakes the task itself.
#[derive(Default)]
struct State {
    task: AtomicWaker,
    flags: AtomicU8,
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let noted = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |flags| (flags & POLLING != 0).then_some(flags | WOKEN));
        if noted.is_err() {
            self.task.wake();
        }
    }
}

/// One per upstream connection, reused for every request on it.
pub struct SelfWake {
    state: Arc<State>,
    waker: Waker,
}

impl Default for SelfWake {
    fn default() -> SelfWake {
        let state = Arc::new(State::default());
        let waker = Waker::from(state.clone());
        SelfWake { state, waker }
    }
}

impl SelfWake {
    /// Runs `f`, which may wake the futures this waker serves (hyper hands a
    /// request to its connection when `try_send_request` is called, not when
    /// polled), without waking the task. Call [`SelfWake::poll`] right after:
    /// it polls those futures anyway, so nothing waits on a lost wake-up.
    pub fn quiet<R>(&self, f: impl FnOnce() -> R) -> R {
        self.state.flags.store(POLLING, Ordering::Release);
        let result = f();
        self.state.flags.store(0, Ordering::Release);
        result
    }

    /// Runs `step` with this waker until it is ready or nothing woke it
    /// during the step. Every wake-up is either acted on here or passed to
    /// the task: none is lost.
    pub fn poll<T>(&self, cx: &mut Context<'_>, mut step: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.state.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        let mut result = Poll::Pending;
        for _ in 0..=MAX_INLINE_REPOLLS {
            self.state.flags.store(POLLING, Ordering::Release);
            result = step(&mut inner);
            if result.is_ready() || self.state.flags.load(Ordering::Acquire) & WOKEN == 0 {
                break;
            }
        }
        let flags = self.state.flags.swap(0, Ordering::AcqRel);
        // A wake-up that landed after the last check, or that the repoll
        // limit left unserved, goes to the scheduler. Once the step is ready
        // its caller polls on (hyper goes on to the body, the body's end
        // finishes the exchange), which sees whatever the wake-up was for.
        if result.is_pending() && flags & WOKEN != 0 {
            cx.waker().wake_by_ref();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    /// A first poll registers the task and hands out the waker the step saw.
    fn inner_waker(wake: &SelfWake, task: &Waker) -> Waker {
        let mut inner = None;
        let result: Poll<()> = wake.poll(&mut Context::from_waker(task), |cx| {
            inner = Some(cx.waker().clone());
            Poll::Pending
        });
        assert!(result.is_pending());
        inner.expect("the step ran")
    }

    #[test]
    fn a_wake_during_the_step_repolls_inline_instead_of_waking_the_task() {
        let (woken, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let wake = SelfWake::default();
        let mut steps = 0;
        let result = wake.poll(&mut cx, |inner| {
            steps += 1;
            if steps == 1 {
                inner.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(steps)
            }
        });
        assert_eq!(result, Poll::Ready(2));
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_after_the_step_reaches_the_task() {
        let (woken, waker) = task();
        let wake = SelfWake::default();
        inner_waker(&wake, &waker).wake();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wake_inside_quiet_does_not_reach_the_task() {
        let (woken, waker) = task();
        let wake = SelfWake::default();
        let kept = inner_waker(&wake, &waker);
        wake.quiet(|| kept.wake_by_ref());
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        kept.wake_by_ref();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wake_up_from_another_thread_racing_the_end_of_a_poll_is_never_lost() {
        use std::sync::Barrier;
        use std::sync::atomic::AtomicBool;
        for _ in 0..2_000 {
            let (woken, waker) = task();
            let wake = SelfWake::default();
            let inner = inner_waker(&wake, &waker);
            let sent = Arc::new(AtomicBool::new(false));
            let barrier = Arc::new(Barrier::new(2));
            let waking = {
                let (sent, barrier) = (sent.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    sent.store(true, Ordering::SeqCst);
                    inner.wake_by_ref();
                })
            };
            barrier.wait();
            let mut saw_sent = false;
            let _: Poll<()> = wake.poll(&mut Context::from_waker(&waker), |_| {
                saw_sent |= sent.load(Ordering::SeqCst);
                Poll::Pending
            });
            waking.join().unwrap();
            // Either a step ran after the wake-up was sent, or the task was woken.
            assert!(saw_sent || woken.0.load(Ordering::SeqCst) > 0, "a wake-up was lost");
        }
    }

    #[test]
    fn a_future_that_always_wakes_itself_is_handed_back_to_the_scheduler() {
        let (woken, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let wake = SelfWake::default();
        let mut steps = 0;
        let result: Poll<()> = wake.poll(&mut cx, |inner| {
            steps += 1;
            inner.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(result.is_pending());
        assert_eq!(steps, MAX_INLINE_REPOLLS + 1);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the pending wake-up is not lost");
    }
}
