//! One attempt: claim the job, run it on its backend under its deadline
//! and cancellation, decide from the outcome class, record the result.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use work_host_api::{ExecContext, ExecError, Job, JobError, JobStatus, OutcomeClass};

use super::Inner;
use super::state::{Released, Start};
use crate::events::EventData;
use crate::store::Transition;

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

/// Runs `start`, then, while its end lets other jobs start, one of those
/// in the same task (the rest in tasks of their own): under load this
/// saves a task spawn and a thread wake-up per job.
pub(crate) async fn run_attempt(inner: Arc<Inner>, start: Start) {
    let mut next = Some(start);
    while let Some(start) = next {
        let mut starts = attempt(&inner, start).await;
        next = starts.pop();
        inner.spawn_all(starts);
        // Yield now and then, so a stream of instant jobs cannot hog the
        // worker thread.
        tokio::task::consume_budget().await;
    }
}

/// One attempt; returns the jobs its end allowed to start.
async fn attempt(inner: &Arc<Inner>, start: Start) -> Vec<Start> {
    let backend = Arc::clone(&inner.backends[start.backend]);
    let claim = Transition::Claim {
        backend: backend.name().to_owned(),
        at: Utc::now(),
    };
    let job = match inner.store.transition(start.id, claim).await {
        Ok(job) => job,
        Err(err) => {
            tracing::warn!(id = %start.id, %err, "could not claim a dispatched job");
            abandon_attempt(inner, &start).await;
            return Vec::new();
        }
    };
    let (id, attempt) = (job.id, job.attempt);
    let tenant = Arc::clone(&start.tenant);
    inner.telemetry.job(id, &tenant, || EventData::Dequeued {
        priority: start.level,
        waited_ms: start.waited.as_millis() as u64,
    });
    inner
        .telemetry
        .job(id, &tenant, || EventData::BackendSelected {
            backend: backend.name().to_owned(),
            attempt,
        });
    inner.telemetry.job(id, &tenant, || EventData::Started {
        attempt,
        devices: start.devices.clone(),
    });

    let updates = {
        let inner = Arc::clone(inner);
        let tenant = Arc::clone(&tenant);
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
    );
    let timeout = job.resources.timeout().or(inner.defaults.timeout);
    let started = Instant::now();
    let outcome = supervise(
        backend.execute(&job, ctx),
        &start.cancel,
        timeout,
        inner.defaults.cancel_grace,
    )
    .await;
    let run_time = started.elapsed();

    let class = match &outcome {
        Ok(_) => OutcomeClass::Ok,
        Err(err) => err.class,
    };
    let mut decision = decide(&job, outcome);
    let (epoch, priority) = (job.lease_epoch, job.priority);
    // Let go of the claimed copy so the store can update it in place.
    drop(job);
    let at = Utc::now();
    let (change, run_at) = match &mut decision {
        Decision::Retry { delay, error } => (
            Transition::Retry {
                epoch,
                outcome: class,
                error: error.clone(),
                next_run_at: at + chrono::Duration::from_std(*delay).unwrap_or_default(),
            },
            Some(Instant::now() + *delay),
        ),
        Decision::Finish {
            status,
            result,
            error,
            dead_letter,
        } => (
            Transition::Finish {
                epoch,
                status: *status,
                outcome: class,
                // Only the store needs the result.
                result: result.take(),
                error: error.clone(),
                dead_letter: *dead_letter,
                at,
            },
            None,
        ),
    };
    if let Err(err) = inner.store.transition(id, change).await {
        // Someone else owns the job now (a newer epoch); their record
        // stands. Give the resources back and forget it here.
        tracing::warn!(%id, %err, "attempt result refused by the store");
        abandon_attempt(inner, &start).await;
        return Vec::new();
    }

    let (released, requeued, starts) = {
        let mut state = inner.state.lock();
        let now = Instant::now();
        state.end_attempt(id, now);
        let (released, requeued) = match (&decision, run_at) {
            (Decision::Retry { .. }, Some(run_at)) => {
                (Released::default(), state.retry(id, run_at, now))
            }
            (Decision::Finish { status, .. }, _) => (state.finished(id, *status, now), None),
            (Decision::Retry { .. }, None) => (Released::default(), None),
        };
        (released, requeued, state.dispatch(now))
    };
    match decision {
        Decision::Retry { delay, error } => {
            inner.timer.notify_one();
            inner.telemetry.job(id, &tenant, || EventData::Retry {
                attempt,
                outcome: class,
                error,
                delay_ms: delay.as_millis() as u64,
            });
            if let Some(depth) = requeued {
                inner
                    .telemetry
                    .job(id, &tenant, || EventData::Enqueued { priority, depth });
            }
        }
        Decision::Finish {
            status,
            error,
            dead_letter,
            ..
        } => {
            let error = error.unwrap_or_else(|| job_error(class, String::new()));
            inner.telemetry.job(id, &tenant, || match status {
                JobStatus::Succeeded => EventData::Completed {
                    attempt,
                    run_ms: run_time.as_millis() as u64,
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
            });
        }
    }
    inner.settle(released).await;
    starts
}

/// The attempt could not be recorded: give back what it held and let the
/// store's record decide what the scheduler does with the job.
async fn abandon_attempt(inner: &Arc<Inner>, start: &Start) {
    let stored = inner.store.get(start.id).await.ok().flatten();
    let released = {
        let mut state = inner.state.lock();
        let now = Instant::now();
        state.end_attempt(start.id, now);
        match stored.map(|job| job.status) {
            Some(JobStatus::Queued) => {
                state.retry(start.id, now + Duration::from_secs(1), now);
                Released::default()
            }
            Some(status) if status.is_terminal() => state.finished(start.id, status, now),
            // Running elsewhere, or gone: not ours to track.
            _ => state.finished(start.id, JobStatus::Canceled, now),
        }
    };
    inner.timer.notify_one();
    inner.settle(released).await;
}

/// Runs `exec` until it returns, its deadline passes, or the job is
/// cancelled (`cancel`, which the backend also holds). At the deadline the
/// engine cancels `cancel` itself; either way the backend gets `grace` to
/// return, and is dropped after that.
async fn supervise(
    exec: impl Future<Output = Result<serde_json::Value, ExecError>>,
    cancel: &CancellationToken,
    timeout: Option<Duration>,
    grace: Duration,
) -> Result<serde_json::Value, ExecError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let sleep_until = |at: Option<Instant>| async move {
        match at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(exec);
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
