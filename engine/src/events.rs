//! Lifecycle events (SPEC §7): one [`Event`] per step, as a `tracing` event
//! and on the stream [`Engine::subscribe`](crate::Engine::subscribe) hands out.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;
use work_host_api::{Device, ExecUpdate, JobError, JobId, JobKind, OutcomeClass, Priority};

/// One step in the life of a job or a queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The job it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The tenant it is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub data: EventData,
}

/// What happened, by its SPEC name (the JSON `type`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum EventData {
    /// Accepted.
    #[serde(rename = "job.submitted")]
    Submitted {
        /// Its kind.
        kind: JobKind,
        /// Its level.
        priority: Priority,
        /// Its namespace.
        namespace: String,
    },
    /// Admission passed: schema, backend, quotas, capacity.
    #[serde(rename = "scheduler.admit")]
    Admitted {
        /// The backend that will run it.
        backend: String,
    },
    /// Waiting for its turn (possibly until `run_at`).
    #[serde(rename = "job.queued")]
    Queued {
        /// Its level.
        priority: Priority,
        /// Not before this time (a retry's backoff or `not_before`).
        #[serde(skip_serializing_if = "Option::is_none")]
        run_at: Option<DateTime<Utc>>,
    },
    /// Put in its level's queue.
    #[serde(rename = "queue.enqueue")]
    Enqueued {
        /// The level.
        priority: Priority,
        /// Jobs queued at that level now.
        depth: usize,
    },
    /// Refused: its level's queue was full.
    #[serde(rename = "queue.overflow")]
    Overflow {
        /// The level.
        priority: Priority,
        /// The level's capacity.
        capacity: usize,
    },
    /// Taken off its queue to run.
    #[serde(rename = "queue.dequeue")]
    Dequeued {
        /// The level it left (after aging).
        priority: Priority,
        /// How long it waited in the queue.
        waited_ms: u64,
    },
    /// The backend chosen for an attempt.
    #[serde(rename = "scheduler.select_backend")]
    BackendSelected {
        /// Its name.
        backend: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// An attempt started.
    #[serde(rename = "job.started")]
    Started {
        /// The attempt, from 1.
        attempt: u32,
        /// Devices assigned to it.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        devices: Vec<Device>,
    },
    /// A running attempt reported progress, a partial result or a log line.
    #[serde(rename = "job.progress")]
    Progress {
        /// The attempt, from 1.
        attempt: u32,
        /// What it reported.
        update: ExecUpdate,
    },
    /// An attempt failed and the job will be tried again.
    #[serde(rename = "job.retry")]
    Retry {
        /// The attempt that failed.
        attempt: u32,
        /// How it ended.
        outcome: OutcomeClass,
        /// Why.
        error: JobError,
        /// The backoff before the next attempt.
        delay_ms: u64,
    },
    /// Succeeded.
    #[serde(rename = "job.completed")]
    Completed {
        /// The attempt that succeeded.
        attempt: u32,
        /// How long it ran.
        run_ms: u64,
    },
    /// Failed for good.
    #[serde(rename = "job.failed")]
    Failed {
        /// The last attempt.
        attempt: u32,
        /// How it ended.
        outcome: OutcomeClass,
        /// Why.
        error: JobError,
        /// Whether it was kept in the dead-letter queue.
        dead_letter: bool,
    },
    /// Ran out of time on its last attempt.
    #[serde(rename = "job.timeout")]
    TimedOut {
        /// The last attempt.
        attempt: u32,
        /// Why.
        error: JobError,
        /// Whether it was kept in the dead-letter queue.
        dead_letter: bool,
    },
    /// Cancelled by a caller, or because a dependency failed.
    #[serde(rename = "job.canceled")]
    Canceled {
        /// Why.
        reason: String,
    },
}

impl EventData {
    /// The SPEC name (`job.started`, `queue.overflow`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Submitted { .. } => "job.submitted",
            Self::Admitted { .. } => "scheduler.admit",
            Self::Queued { .. } => "job.queued",
            Self::Enqueued { .. } => "queue.enqueue",
            Self::Overflow { .. } => "queue.overflow",
            Self::Dequeued { .. } => "queue.dequeue",
            Self::BackendSelected { .. } => "scheduler.select_backend",
            Self::Started { .. } => "job.started",
            Self::Progress { .. } => "job.progress",
            Self::Retry { .. } => "job.retry",
            Self::Completed { .. } => "job.completed",
            Self::Failed { .. } => "job.failed",
            Self::TimedOut { .. } => "job.timeout",
            Self::Canceled { .. } => "job.canceled",
        }
    }

    /// Whether this is the last event of a job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. }
                | Self::Failed { .. }
                | Self::TimedOut { .. }
                | Self::Canceled { .. }
        )
    }
}

/// Why [`EventStream::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    /// The subscriber fell behind and `missed` events were dropped for it;
    /// the stream goes on with the oldest event still held.
    #[error("subscriber lagged: {missed} events dropped")]
    Lagged {
        /// How many.
        missed: u64,
    },
    /// The engine is gone.
    #[error("event stream closed")]
    Closed,
}

/// A subscription to every event, bounded: a subscriber that falls behind
/// loses the oldest events and is told how many, and never slows the
/// scheduler down.
#[derive(Debug)]
pub struct EventStream {
    receiver: broadcast::Receiver<Event>,
    _listening: Listening,
}

/// Counts a subscriber for as long as it lives: the count is what every
/// lifecycle step checks, and an atomic is cheaper to read than the
/// channel's own count (a lock).
#[derive(Debug)]
struct Listening(Arc<AtomicUsize>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl EventStream {
    /// The next event.
    ///
    /// # Errors
    ///
    /// [`EventStreamError::Lagged`] once after events were dropped for this
    /// subscriber; [`EventStreamError::Closed`] when the engine is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Result<Event, EventStreamError> {
        self.receiver.recv().await.map_err(|err| match err {
            broadcast::error::RecvError::Lagged(missed) => EventStreamError::Lagged { missed },
            broadcast::error::RecvError::Closed => EventStreamError::Closed,
        })
    }

    /// The next event if one is ready now.
    ///
    /// # Errors
    ///
    /// As [`EventStream::recv`], plus `Ok(None)` when none is ready.
    pub fn try_recv(&mut self) -> Result<Option<Event>, EventStreamError> {
        match self.receiver.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Err(EventStreamError::Lagged { missed })
            }
            Err(broadcast::error::TryRecvError::Closed) => Err(EventStreamError::Closed),
        }
    }
}

/// Sees the events it wants as they are emitted, on the thread that emits
/// them and mostly under the scheduler's lock: unlike a subscriber it can
/// never fall behind and lose one, so it must be quick (hand the event on,
/// don't work on it) and must not call the engine. An audit trail is its
/// use. If it panics, that event is lost to it (and logged); the engine
/// goes on.
#[derive(Clone)]
pub struct EventObserver {
    wants: fn(&EventData) -> bool,
    observe: Arc<dyn Fn(&Event) + Send + Sync>,
}

impl EventObserver {
    /// Calls `observe` with every event for which `wants` is true; the
    /// others are not even built for it.
    pub fn new(
        wants: fn(&EventData) -> bool,
        observe: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Self {
        Self {
            wants,
            observe: Arc::new(observe),
        }
    }
}

impl std::fmt::Debug for EventObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventObserver").finish_non_exhaustive()
    }
}

/// Sends events to `tracing`, the observer and subscribers; builds none
/// when nobody listens.
pub(crate) struct Telemetry {
    sender: broadcast::Sender<Event>,
    listeners: Arc<AtomicUsize>,
    observer: Option<EventObserver>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("listeners", &self.listeners)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub(crate) fn new(capacity: usize, observer: Option<EventObserver>) -> Self {
        Self {
            sender: broadcast::Sender::new(capacity.max(1)),
            listeners: Arc::new(AtomicUsize::new(0)),
            observer,
        }
    }

    pub(crate) fn subscribe(&self) -> EventStream {
        self.listeners.fetch_add(1, Ordering::Acquire);
        EventStream {
            receiver: self.sender.subscribe(),
            _listening: Listening(Arc::clone(&self.listeners)),
        }
    }

    /// Emits the event `make` builds about job `job` of `tenant`, if
    /// anyone is listening.
    pub(crate) fn job(&self, job: JobId, tenant: &str, make: impl FnOnce() -> EventData) {
        self.emit(Some(job), Some(tenant), make);
    }

    pub(crate) fn emit(
        &self,
        job: Option<JobId>,
        tenant: Option<&str>,
        make: impl FnOnce() -> EventData,
    ) {
        let traced = tracing::enabled!(target: "work_engine::event", tracing::Level::DEBUG);
        let listened = traced || self.listeners.load(Ordering::Acquire) > 0;
        if !listened && self.observer.is_none() {
            return;
        }
        let data = make();
        let observer = self.observer.as_ref().filter(|o| (o.wants)(&data));
        if !listened && observer.is_none() {
            return;
        }
        let event = Event {
            at: Utc::now(),
            job_id: job,
            tenant_id: tenant.map(str::to_owned),
            data,
        };
        if traced {
            let detail = serde_json::to_string(&event.data).unwrap_or_default();
            tracing::debug!(
                target: "work_engine::event",
                event = event.data.name(),
                job_id = event.job_id.map(|id| id.to_string()).as_deref(),
                tenant_id = event.tenant_id.as_deref(),
                detail,
            );
        }
        if let Some(observer) = observer {
            // Mostly under the scheduler's lock, halfway through a change:
            // a panic unwinding from here would leave the scheduler's
            // books half done and take the runner or caller down with it.
            let observed =
                std::panic::catch_unwind(AssertUnwindSafe(|| (observer.observe)(&event)));
            if observed.is_err() {
                tracing::error!(
                    event = event.data.name(),
                    job_id = event.job_id.map(|id| id.to_string()).as_deref(),
                    "the event observer panicked; the event is lost to it"
                );
            }
        }
        // No receiver is fine: nobody asked.
        let _ = self.sender.send(event);
    }
}
