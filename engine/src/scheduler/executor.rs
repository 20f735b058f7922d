//! The runners: claim dispatched jobs, run each attempt on its backend
//! under its deadline and cancellation, decide from the outcome class, and
//! record the results.
//!
//! Work moves in batches. A runner takes up to [`BATCH`] dispatched jobs,
//! claims them in one store call, and polls each attempt once in place: an
//! attempt that finishes at once (most quick jobs) costs no task of its
//! own, and its result is recorded with the rest of the batch in one more
//! store call and one pass under the scheduler's lock. An attempt that
//! does not finish at once continues in a task of its own, and records
//! its result alone.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use work_host_api::{
    CostMeter, ExecContext, ExecError, Job, JobError, JobId, JobStatus, OutcomeClass,
};

use super::state::{PlaceOutcome, Released, Start};
use super::{Inner, cost_left, later};
use crate::events::EventData;
use crate::store::{Commit, Transition};

/// The most dispatched jobs a runner takes at once.
pub(crate) const BATCH: usize = 64;

/// The most batches of results waiting for the store's commit in tasks of
/// their own. Beyond it a runner waits for its batch's commit itself:
/// runners cannot run ahead of the store without bound, and the jobs whose
/// ends are not written yet stay few enough for the store to keep them
/// all in memory (64 × [`BATCH`] = 4,096).
pub(crate) const RECORDS_IN_FLIGHT: usize = 64;

/// How long a runner keeps running attempts in place before it hands the
/// rest of its batch to tasks of their own, so that one slow attempt does
/// not hold up the others for long.
const IN_PLACE_BUDGET: Duration = Duration::from_millis(1);

/// What became of an attempt.
enum Decision {
    Retry {
        delay: Duration,
        error: JobError,
    },
    Finish {
        status: JobStatus,
        result: Option<serde_json::Value>,
        error: Option<JobError>,
        dead_letter: bool,
    },
}

/// An attempt that has run, not yet recorded.
struct Done {
    start: Start,
    id: JobId,
    attempt: u32,
    epoch: u64,
    priority: work_host_api::Priority,
    class: OutcomeClass,
    run_time: Duration,
    /// What the attempt charged, in US dollars.
    cost_usd: f64,
    decision: Decision,
}

/// A runner: until the engine shuts down, takes batches of dispatched
/// jobs and runs them. Holds the engine only while it has work.
pub(crate) async fn runner(inner: Weak<Inner>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut idle = false;
    // Where this runner's attempts run in place, one after another, batch
    // after batch (see `run_batch`).
    let mut slots = Slots {
        attempt: Slot::default(),
        record: Slot::default(),
    };
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (batch, wake_another) = strong.state.lock().take_runnable(BATCH, &mut idle);
        if wake_another {
            wake.notify_one();
        }
        if batch.is_empty() {
            drop(strong);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = wake.notified() => continue,
            }
        }
        // The runner just woken waits in this worker's next-task slot,
        // which no other worker can take from: it would not start before
        // this batch ends. Yielding first moves this runner to where an
        // idle worker takes it, and the two batches run side by side.
        if wake_another {
            super::yield_to_workers().await;
        }
        let woke_another = run_batch(&strong, batch, &mut slots, attempt, record_owned).await;
        drop(strong);
        if woke_another {
            super::yield_to_workers().await;
        } else {
            // Yield now and then, so a stream of instant jobs cannot hog
            // the worker thread.
            tokio::task::consume_budget().await;
        }
    }
}

/// Claims `batch`, runs each attempt (in place while they finish at once),
/// and records the ones that finished. Returns whether recording them in
/// place woke another runner.
///
/// The attempts run in place in `slots.attempt`, each written over the
/// one before (see [`Slot`]), and the batch's record in `slots.record`.
/// (`begin` is [`attempt`] and `begin_record` [`record_owned`], passed in
/// so that the slots' types can be named.)
async fn run_batch<F, B, R, M>(
    inner: &Arc<Inner>,
    batch: Vec<Start>,
    slots: &mut Slots<F, R>,
    begin: B,
    begin_record: M,
) -> bool
where
    F: Future<Output = Done> + Send + 'static,
    B: Fn(Arc<Inner>, Start, Arc<Job>) -> F + Copy,
    R: Future<Output = bool> + Send + 'static,
    M: FnOnce(Arc<Inner>, Vec<Done>) -> R,
{
    let at = Utc::now();
    let claims = batch
        .iter()
        .map(|start| {
            let claim = Transition::Claim {
                backend: inner.backends[start.backend].name().into(),
                at,
            };
            (start.id, claim)
        })
        .collect();
    // A claim lost in a crash only leaves the attempt uncounted: nothing
    // waits for it to be durable (the result's commit covers it).
    let claimed = inner.store.transition_batch(claims, Commit::Ordered).await;
    let began = Instant::now();
    let mut done = Vec::with_capacity(batch.len());
    for (start, claimed) in batch.into_iter().zip(claimed) {
        let job = match claimed {
            Ok(job) => job,
            Err(err) => {
                tracing::warn!(id = %start.id, %err, "could not claim a dispatched job");
                abandon_attempt(inner, &start).await;
                continue;
            }
        };
        slots.attempt.start(|| begin(Arc::clone(inner), start, job));
        // IN_PLACE_BUDGET bounds the time spent running attempts here.
        if began.elapsed() < IN_PLACE_BUDGET
            && let Poll::Ready(finished) = slots.attempt.poll_here()
        {
            done.push(finished);
            continue;
        }
        let attempt = slots.attempt.take();
        let inner = Arc::clone(inner);
        tokio::spawn(async move {
            if let Some(finished) = attempt.await {
                record(&inner, vec![finished]).await;
            }
        });
    }
    if done.is_empty() {
        return false;
    }
    // A durable store answers after its commit: the runner does not wait
    // for it, but goes on to the next batch while a task of its own waits,
    // up to RECORDS_IN_FLIGHT such tasks.
    slots.record.start(|| begin_record(Arc::clone(inner), done));
    if let Poll::Ready(woke_another) = slots.record.poll_here() {
        return woke_another;
    }
    let recording = slots.record.take();
    match Arc::clone(&inner.records).try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                recording.await;
                drop(permit);
            });
            false
        }
        Err(_) => recording.await.unwrap_or(false),
    }
}

/// Where a runner's attempts and records run, one after another (see
/// [`run_batch`]).
struct Slots<F, R> {
    attempt: Slot<F>,
    record: Slot<R>,
}

/// A place where a runner's futures of one kind run, each written over
/// the one before, so that none needs a fresh box: a future is some
/// kilobytes (an attempt's; a record's, one), and a fresh box for each
/// went to memory the cache no longer held. One that does not finish at
/// its first poll is taken away, box and all, to a task of its own, and a
/// new box is left in its place.
struct Slot<F>(Pin<Box<Option<F>>>);

impl<F> Default for Slot<F> {
    fn default() -> Self {
        Self(Box::pin(None))
    }
}

impl<F: Future> Slot<F> {
    /// Writes the future `make` returns into the slot.
    ///
    /// Written where it will run, not built elsewhere and moved there:
    /// moving a future copies all of it, though only its arguments are set
    /// before its first poll. Set with `Pin::set`, each attempt's future
    /// was built on the stack and copied into the slot: some 900
    /// instructions and 160 first-level cache misses a job
    /// (`scripts/count-instructions.py --cache`). Written with no read of
    /// the slot between the call and the write (an assignment drops the old
    /// value there), in a function of its own, only its arguments are
    /// written, in place (checked in the disassembly: no `memcpy` here).
    #[inline(never)]
    #[expect(
        unsafe_code,
        reason = "writes into an empty pinned slot without dropping its `None` first"
    )]
    fn start(&mut self, make: impl FnOnce() -> F) {
        if self.0.is_some() {
            // Not reached: each future is taken out, or dropped in place
            // when it ends, before the next. Were one there, it is dropped
            // first.
            self.0.set(Some(make()));
            return;
        }
        // SAFETY: nothing pinned moves or is left undropped: the slot
        // holds `None`, which has nothing to drop, and the future written
        // into it is pinned from then on, as `Pin::set` would leave it.
        unsafe {
            std::ptr::write(self.0.as_mut().get_unchecked_mut(), Some(make()));
        }
    }

    /// Polls the future here, once; one that finished is dropped, with
    /// what it held.
    ///
    /// Polled with a waker that does nothing: if it is not finished, the
    /// task it moves to ([`Slot::take`]) polls it again first thing, and
    /// that poll registers the real waker. Outside Tokio's cooperative
    /// budget: the runner's task spends it over a batch, and a spent budget
    /// makes any `select!` in the future answer `Pending`, which would send
    /// a quick attempt to a task of its own for nothing.
    fn poll_here(&mut self) -> Poll<F::Output> {
        let Some(running) = self.0.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let polled = std::pin::pin!(tokio::task::unconstrained(running))
            .poll(&mut Context::from_waker(Waker::noop()));
        if polled.is_ready() {
            self.0.set(None);
        }
        polled
    }

    /// The future, to finish elsewhere (`None` if the slot was empty); a
    /// new box is left in its place.
    fn take(&mut self) -> impl Future<Output = Option<F::Output>> + use<F> {
        let mut taken = std::mem::take(self).0;
        async move {
            match taken.as_mut().as_pin_mut() {
                Some(running) => Some(running.await),
                None => None,
            }
        }
    }
}

/// One attempt of a claimed job, up to its decision.
async fn attempt(inner: Arc<Inner>, start: Start, job: Arc<Job>) -> Done {
    let (id, attempt) = (job.id, job.attempt);
    inner
        .telemetry
        .job(id, &start.tenant, || EventData::Dequeued {
            priority: start.level,
            waited_ms: start.waited.as_millis() as u64,
        });
    let started = Instant::now();
    let (outcome, meter) = if start.cancel.is_cancelled() {
        // Cancelled between its dispatch and now: its backend is not
        // started at all (it would be polled once before it looked at the
        // signal).
        let canceled = Err(ExecError::new(
            OutcomeClass::Canceled,
            "canceled by request before it started",
        ));
        (canceled, None)
    } else {
        let (outcome, meter) = execute(&inner, &start, &job).await;
        (outcome, Some(meter))
    };
    let run_time = started.elapsed();
    let cost_usd = meter.as_ref().map_or(0.0, |meter| meter.charged_usd());
    let over_cost_limit = meter.is_some_and(|meter| meter.over_limit());
    let (class, decision) = match outcome {
        // Stopped for what it spent (a result it returned all the same
        // stands): canceled, however the backend took the signal.
        Err(_) if over_cost_limit => (OutcomeClass::Canceled, cost_limit_reached(&job, cost_usd)),
        outcome => {
            let class = match &outcome {
                Ok(_) => OutcomeClass::Ok,
                Err(err) => err.class,
            };
            (class, decide(&job, outcome))
        }
    };
    Done {
        id,
        attempt,
        epoch: job.lease_epoch,
        priority: job.priority,
        class,
        run_time,
        cost_usd,
        decision,
        start,
    }
}

/// The end of a job whose charges went past its `max_cost_usd`.
fn cost_limit_reached(job: &Job, charged: f64) -> Decision {
    let cap = job.resources.max_cost_usd.unwrap_or_default();
    Decision::Finish {
        status: JobStatus::Canceled,
        result: None,
        error: Some(JobError {
            code: "cost_limit".to_owned(),
            message: format!(
                "stopped at a cost of {} USD, past its max_cost_usd of {cap} USD",
                job.cost_usd + charged
            ),
            retryable: false,
        }),
        dead_letter: false,
    }
}

/// Starts the attempt on its backend and supervises it to its end; also
/// returns what it charged.
async fn execute(
    inner: &Arc<Inner>,
    start: &Start,
    job: &Job,
) -> (Result<serde_json::Value, ExecError>, Arc<CostMeter>) {
    let backend = &inner.backends[start.backend];
    let (id, attempt) = (job.id, job.attempt);
    let tenant = &start.tenant;
    inner
        .telemetry
        .job(id, tenant, || EventData::BackendSelected {
            backend: backend.name().to_owned(),
            attempt,
        });
    inner.telemetry.job(id, tenant, || EventData::Started {
        attempt,
        devices: start.devices.clone(),
    });

    let updates = {
        let inner = Arc::clone(inner);
        let tenant = Arc::clone(tenant);
        Arc::new(move |update| {
            inner
                .telemetry
                .job(id, &tenant, || EventData::Progress { attempt, update });
        })
    };
    let ctx = ExecContext::new(
        attempt,
        start.devices.clone(),
        updates,
        start.cancel.clone(),
    )
    .with_cost_limit(cost_left(job));
    let meter = Arc::clone(ctx.cost_meter());
    let timeout = job.resources.timeout().or(inner.defaults.timeout);
    // Pinned here and lent to `supervise`, not moved into it: a future
    // moved into an `async fn` is kept in its caller's state and again in
    // the callee's, and the call inside is some kilobytes.
    let exec = std::pin::pin!(unwound(backend.execute(job, ctx)));
    let outcome = supervise(exec, &start.cancel, timeout, inner.defaults.cancel_grace).await;
    (outcome, meter)
}

/// [`record`] of a batch, owning what it needs, as a runner's slot holds
/// it.
async fn record_owned(inner: Arc<Inner>, done: Vec<Done>) -> bool {
    record(&inner, done).await
}

/// Records finished attempts: their transitions in one store call, the
/// scheduler's bookkeeping in one pass under its lock, then their events
/// and whatever their ends set free. Returns whether it woke another
/// runner for the jobs their ends let start.
async fn record(inner: &Arc<Inner>, mut done: Vec<Done>) -> bool {
    if done.is_empty() {
        return false;
    }
    let at = Utc::now();
    let changes = done
        .iter_mut()
        .map(|d| {
            let change = match &mut d.decision {
                Decision::Retry { delay, error } => Transition::Retry {
                    epoch: d.epoch,
                    outcome: d.class,
                    error: error.clone(),
                    // A delay past the calendar's end (a policy may ask for
                    // u64::MAX ms) is the latest date there is: never.
                    next_run_at: chrono::Duration::from_std(*delay)
                        .ok()
                        .and_then(|delay| at.checked_add_signed(delay))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                    cost_usd: d.cost_usd,
                },
                Decision::Finish {
                    status,
                    result,
                    error,
                    dead_letter,
                } => Transition::Finish {
                    epoch: d.epoch,
                    status: *status,
                    outcome: d.class,
                    // Only the store needs the result.
                    result: result.take(),
                    error: error.clone(),
                    dead_letter: *dead_letter,
                    at,
                    cost_usd: d.cost_usd,
                },
            };
            (d.id, change)
        })
        .collect();
    let mut recording = inner.store.transition_batch(changes, Commit::Durable);
    let polled = recording
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    let recorded = match polled {
        Poll::Ready(recorded) => recorded,
        Poll::Pending => {
            // The store answers after a commit (on disk): what the attempts
            // held is free for the next jobs now, not once their results
            // are durable.
            let wake = {
                let mut state = inner.state.lock();
                let now = Instant::now();
                for d in &done {
                    state.end_attempt(d.id, now);
                }
                state.dispatch(now)
            };
            inner.wake_runner(wake);
            recording.await
        }
    };

    let mut released = Released::default();
    let mut refused = Vec::new();
    let wake = {
        let mut state = inner.state.lock();
        let now = Instant::now();
        for (d, recorded) in done.into_iter().zip(recorded) {
            // Spent, whether or not the store takes the report.
            state.charge(d.id, &d.start.tenant, d.cost_usd);
            if let Err(err) = recorded {
                refused.push((d.start, err));
                continue;
            }
            state.end_attempt(d.id, now);
            state.count_outcome(d.class);
            // Announced under the lock, in the same pass as the change:
            // no other thread can act on the job (run it again, revive
            // it) and announce that first, and the waiters woken by
            // `finished` find the end on the stream.
            match d.decision {
                Decision::Retry { delay, .. } => {
                    let requeued = state.retry(d.id, later(now, delay), now);
                    let depth = match requeued {
                        PlaceOutcome::Queued(depth) => Some(depth),
                        PlaceOutcome::Canceled => {
                            // Asked to stop while the failed attempt ran:
                            // no more attempts.
                            released.canceled.push(d.id);
                            None
                        }
                        _ => None,
                    };
                    announce(inner, d, depth);
                }
                Decision::Finish { status, .. } => {
                    let id = d.id;
                    announce(inner, d, None);
                    released.absorb(state.finished(id, status, now));
                }
            }
        }
        state.dispatch(now)
    };
    inner.wake_runner(wake);

    for (start, err) in refused {
        // Someone else owns the job now (a newer epoch); their record
        // stands. Give the resources back and forget it here.
        tracing::warn!(id = %start.id, %err, "attempt result refused by the store");
        abandon_attempt(inner, &start).await;
    }
    inner.settle(released).await;
    wake
}

/// The events of a recorded attempt.
fn announce(inner: &Inner, d: Done, requeued: Option<usize>) {
    let (id, attempt, class) = (d.id, d.attempt, d.class);
    let tenant = &d.start.tenant;
    match d.decision {
        Decision::Retry { delay, error } => {
            inner.timer.notify_one();
            inner.telemetry.job(id, tenant, || EventData::Retry {
                attempt,
                outcome: class,
                error,
                delay_ms: delay.as_millis() as u64,
            });
            if let Some(depth) = requeued {
                inner.telemetry.job(id, tenant, || EventData::Enqueued {
                    priority: d.priority,
                    depth,
                });
            }
        }
        Decision::Finish {
            status,
            error,
            dead_letter,
            ..
        } => {
            inner.telemetry.job(id, tenant, || {
                let error = error.unwrap_or_else(|| job_error(class, String::new()));
                match status {
                    JobStatus::Succeeded => EventData::Completed {
                        attempt,
                        run_ms: d.run_time.as_millis() as u64,
                    },
                    JobStatus::Canceled => EventData::Canceled {
                        reason: error.message,
                    },
                    JobStatus::Timeout => EventData::TimedOut {
                        attempt,
                        error,
                        dead_letter,
                    },
                    _ => EventData::Failed {
                        attempt,
                        outcome: class,
                        error,
                        dead_letter,
                    },
                }
            });
        }
    }
}

/// The attempt could not be recorded: give back what it held and let the
/// store's record decide what the scheduler does with the job.
async fn abandon_attempt(inner: &Arc<Inner>, start: &Start) {
    let stored = inner.store.get(start.id).await.ok().flatten();
    let (released, wake) = {
        let mut state = inner.state.lock();
        let now = Instant::now();
        state.end_attempt(start.id, now);
        let released = match stored.map(|job| job.status) {
            Some(JobStatus::Queued) => {
                let mut released = Released::default();
                let requeued = state.retry(start.id, now + Duration::from_secs(1), now);
                if requeued == PlaceOutcome::Canceled {
                    released.canceled.push(start.id);
                }
                released
            }
            Some(status) if status.is_terminal() => state.finished(start.id, status, now),
            // Running elsewhere, or gone: not ours to track.
            _ => state.finished(start.id, JobStatus::Canceled, now),
        };
        (released, state.dispatch(now))
    };
    inner.wake_runner(wake);
    inner.timer.notify_one();
    inner.settle(released).await;
}

/// Runs `exec` until it returns, its deadline passes, or the job is
/// cancelled (`cancel`, which the backend also holds). At the deadline the
/// engine cancels `cancel` itself; either way the backend gets `grace` to
/// return, and is dropped after that.
async fn supervise(
    mut exec: Pin<&mut impl Future<Output = Result<serde_json::Value, ExecError>>>,
    cancel: &CancellationToken,
    timeout: Option<Duration>,
    grace: Duration,
) -> Result<serde_json::Value, ExecError> {
    // A timeout past the clock's range is none.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    // Most attempts end at their first poll. They end here, without the
    // watch's timers: those make the watch's future large (and every
    // attempt's with it), so it is boxed apart, for the attempts that
    // wait.
    match super::poll_once(exec.as_mut()).await {
        Poll::Ready(result) => result,
        Poll::Pending => Box::pin(watch(exec, cancel, deadline, grace)).await,
    }
}

/// [`supervise`] for an attempt that did not end at its first poll.
async fn watch(
    exec: Pin<&mut impl Future<Output = Result<serde_json::Value, ExecError>>>,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
    grace: Duration,
) -> Result<serde_json::Value, ExecError> {
    let sleep_until = |at: Option<Instant>| async move {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let mut exec = PolledAlready { exec, skip: true };
    let mut stopped: Option<(OutcomeClass, Instant)> = None;
    loop {
        let give_up = stopped.map(|(_, at)| at);
        tokio::select! {
            biased;
            result = &mut exec => {
                return match (result, stopped) {
                    // The engine stopped it: that is how it ended, whatever
                    // the backend made of the signal.
                    (Err(err), Some((class, _))) => Err(ExecError::new(class, stop_message(class, &err.message))),
                    (result, _) => result,
                };
            }
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some((OutcomeClass::Canceled, Instant::now() + grace));
            }
            () = sleep_until(deadline), if stopped.is_none() && deadline.is_some() => {
                // Set before cancelling, so the branch above never sees it.
                stopped = Some((OutcomeClass::Timeout, Instant::now() + grace));
                cancel.cancel();
            }
            () = sleep_until(give_up), if give_up.is_some() => {
                let class = stopped.map_or(OutcomeClass::Canceled, |(class, _)| class);
                return Err(ExecError::new(
                    class,
                    format!("{}; the backend did not stop within {grace:?} and was abandoned", stop_message(class, "")),
                ));
            }
        }
    }
}

/// A future polled a moment ago, in the same poll of the task: its first
/// poll here answers `Pending` without polling it again (it has already
/// arranged to be woken), so a guest that yielded does not run another
/// slice before the watch's timers are set.
struct PolledAlready<'a, F> {
    exec: Pin<&'a mut F>,
    skip: bool,
}

impl<F: Future> Future for PolledAlready<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if std::mem::take(&mut self.skip) {
            return Poll::Pending;
        }
        self.exec.as_mut().poll(cx)
    }
}

/// `exec` with a panic in it turned into a `backend_error`: a backend
/// that panics (a `local` closure meeting a payload it did not expect)
/// fails that attempt. Unwinding on would take down the runner that
/// polled it, with the other attempts of its batch, and leave the job
/// running for good, holding its resources.
fn unwound(
    exec: impl Future<Output = Result<serde_json::Value, ExecError>>,
) -> impl Future<Output = Result<serde_json::Value, ExecError>> {
    // Combinators, not an `async fn`: they hold `exec` once.
    AssertUnwindSafe(exec).catch_unwind().map(|unwound| {
        unwound.unwrap_or_else(|panic| {
            Err(ExecError::new(
                OutcomeClass::BackendError,
                format!("the backend panicked: {}", super::panic_text(&*panic)),
            ))
        })
    })
}

fn stop_message(class: OutcomeClass, detail: &str) -> String {
    let what = if class == OutcomeClass::Timeout {
        "ran past its deadline"
    } else {
        "canceled by request"
    };
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({detail})")
    }
}

fn job_error(class: OutcomeClass, message: String) -> JobError {
    JobError {
        code: class.as_str().to_owned(),
        retryable: class.is_retryable(),
        message,
    }
}

/// Success, another attempt after the policy's backoff, or the end.
fn decide(job: &Job, outcome: Result<serde_json::Value, ExecError>) -> Decision {
    let err = match outcome {
        Ok(value) => {
            return Decision::Finish {
                status: JobStatus::Succeeded,
                result: Some(value),
                error: None,
                dead_letter: false,
            };
        }
        Err(err) => err,
    };
    let class = err.class;
    let policy = job.retry_policy();
    let error = JobError {
        retryable: policy.retries(class),
        ..job_error(class, err.message)
    };
    if class == OutcomeClass::Canceled {
        return Decision::Finish {
            status: JobStatus::Canceled,
            result: None,
            error: Some(error),
            dead_letter: false,
        };
    }
    if policy.retries(class) && job.attempt < policy.max_attempts {
        return Decision::Retry {
            delay: policy.delay_after(job.attempt, fastrand::f64()),
            error,
        };
    }
    Decision::Finish {
        status: if class == OutcomeClass::Timeout {
            JobStatus::Timeout
        } else {
            JobStatus::Failed
        },
        result: None,
        error: Some(error),
        dead_letter: true,
    }
}
