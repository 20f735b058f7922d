//! The audit trail: who (a key id, `engine`, `cli` or `anonymous`) did
//! what, to what, when.
//!
//! Recording never waits: entries go to a writer thread that commits them
//! in batches, in the order they were recorded. A read first waits for
//! every entry recorded before it to be written.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{AuthError, AuthStore};
use crate::group_queue::GroupQueue;
use crate::retention::Retention;

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Its place in the trail: later entries have larger numbers.
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// Who: a key id, `engine` (the scheduler's own steps), `cli` (a
    /// command on the data directory) or `anonymous` (no authentication).
    pub actor: String,
    /// The tenant it concerns; absent for the operator's own changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What happened: `job.submitted`, `job.started`, `job.completed`,
    /// `key.created`, `tool.registered`, `quota.set`, …
    pub action: String,
    /// What it happened to: a job id, a key id, a tool, a tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Anything else worth keeping.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// Which entries to read, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only those about this target.
    pub target: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of entries, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

pub(super) enum Op {
    Record(Record),
    Used(String, String),
    Flush(mpsc::Sender<()>),
    /// From now on, drop entries older than this.
    KeepFor(Duration),
}

/// An entry as recorded: what the writer turns into a row.
pub(super) struct Record {
    /// Microseconds since the Unix epoch.
    at: i64,
    actor: String,
    tenant: Option<String>,
    action: &'static str,
    target: Option<String>,
    detail: Option<Detail>,
}

/// An entry's detail, made JSON text by the writer: an event observed
/// under the scheduler's lock costs a copy there, not a serialization.
pub(super) enum Detail {
    Text(String),
    Event(crate::events::EventData),
}

impl Detail {
    fn into_text(self) -> Option<String> {
        match self {
            Self::Text(text) => Some(text),
            // As the event's JSON, `type` and all.
            Self::Event(data) => serde_json::to_string(&data).ok(),
        }
    }
}

/// The most entries one transaction writes.
pub(super) const MAX_GROUP: usize = 4096;

/// How long an entry waits for company before the writer commits it: the
/// trail is written in few, large transactions, and a read (which waits
/// for what was recorded before it) wakes the writer at once.
pub(super) const LINGER: Duration = Duration::from_millis(50);

/// The writer thread: a group of what is queued per transaction, then the
/// entries past their retention, before any flush is answered.
pub(super) fn write(audit: &Connection, ops: &GroupQueue<Op>) {
    let mut retention = Retention::default();
    while let Some(group) = ops.next_group() {
        let mut flushed = Vec::new();
        if let Err(err) = write_group(audit, group, &mut flushed, &mut retention) {
            tracing::error!(%err, "could not write audit entries");
        }
        if let Some(before) = retention.due() {
            match prune(audit, before.timestamp_micros()) {
                Ok(0) => {}
                Ok(dropped) => tracing::debug!(dropped, "dropped old audit entries"),
                Err(err) => tracing::error!(%err, "could not drop old audit entries"),
            }
        }
        for reply in flushed {
            let _ = reply.send(());
        }
    }
}

/// Deletes the entries recorded before `before` (microseconds since the
/// epoch), oldest first, a chunk per transaction: entries are in the order
/// they were recorded, so each chunk looks only at the oldest rows, and
/// the first chunk that is not all old is the last.
fn prune(audit: &Connection, before: i64) -> rusqlite::Result<usize> {
    const CHUNK: usize = 10_000;
    let mut delete = audit.prepare_cached(
        "DELETE FROM audit WHERE at < ?2 \
         AND seq IN (SELECT seq FROM audit ORDER BY seq LIMIT ?1)",
    )?;
    let mut dropped = 0;
    loop {
        let n = delete.execute(params![CHUNK, before])?;
        dropped += n;
        if n < CHUNK {
            return Ok(dropped);
        }
    }
}

fn write_group(
    audit: &Connection,
    group: Vec<Op>,
    flushed: &mut Vec<mpsc::Sender<()>>,
    retention: &mut Retention,
) -> rusqlite::Result<()> {
    let tx = audit.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (at, actor, tenant, action, target, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut used = tx.prepare_cached(
            "INSERT INTO key_use (id, at) VALUES (?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )?;
        for op in group {
            match op {
                Op::Record(entry) => {
                    insert.execute(params![
                        entry.at,
                        entry.actor,
                        entry.tenant,
                        entry.action,
                        entry.target,
                        entry.detail.and_then(Detail::into_text),
                    ])?;
                }
                Op::Used(id, at) => {
                    used.execute(params![id, at])?;
                }
                Op::Flush(reply) => flushed.push(reply),
                Op::KeepFor(keep) => retention.keep_for(keep),
            }
        }
    }
    tx.commit()
}

impl AuthStore {
    /// Records that `actor` did `action` to `target` of `tenant`. Never
    /// waits: the entry is written with the next group.
    pub fn record(
        &self,
        actor: &str,
        tenant: Option<&str>,
        action: &'static str,
        target: Option<&str>,
        detail: serde_json::Value,
    ) {
        let detail = (!detail.is_null()).then(|| Detail::Text(detail.to_string()));
        self.push_record(actor.to_owned(), tenant, action, target, detail);
    }

    fn push_record(
        &self,
        actor: String,
        tenant: Option<&str>,
        action: &'static str,
        target: Option<&str>,
        detail: Option<Detail>,
    ) {
        let record = Record {
            at: chrono::Utc::now().timestamp_micros(),
            actor,
            tenant: tenant.map(str::to_owned),
            action,
            target: target.map(str::to_owned),
            detail,
        };
        self.audit.push(Op::Record(record), false);
    }

    /// From now on, drops the entries older than `keep`: at once, then
    /// with each write, a tenth of `keep` apart and at least once a minute.
    /// Without it, every entry is kept (a command on the data directory
    /// never drops what a server was told to keep); `serve` keeps 30 days
    /// unless told otherwise.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), work_engine::auth::AuthError> {
    /// use std::time::Duration;
    /// let auth = work_engine::auth::AuthStore::open("./data")?;
    /// auth.keep_audit_for(Duration::from_secs(90 * 86_400));
    /// # Ok(()) }
    /// ```
    pub fn keep_audit_for(&self, keep: Duration) {
        self.audit.push(Op::KeepFor(keep), true);
    }

    /// Waits until every entry recorded so far is written (`serve` does
    /// before it exits).
    pub fn flush(&self) {
        let (reply, written) = mpsc::channel();
        self.audit.push(Op::Flush(reply), true);
        let _ = written.recv();
    }

    /// A page of the trail, oldest first, with every entry recorded before
    /// this call.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] for a bad cursor; [`AuthError::Sqlite`].
    pub fn audit(&self, query: &AuditQuery) -> Result<AuditPage, AuthError> {
        let after: i64 = match &query.cursor {
            Some(cursor) => cursor
                .parse()
                .map_err(|_| AuthError::Invalid(format!("invalid cursor `{cursor}`")))?,
            None => 0,
        };
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        self.flush();
        let conn = self.audit_reader.lock();
        let mut statement = conn.prepare_cached(
            "SELECT seq, at, actor, tenant, action, target, detail FROM audit \
             WHERE seq > ?1 AND (?2 IS NULL OR tenant = ?2) AND (?3 IS NULL OR target = ?3) \
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = statement.query_map(
            params![after, query.tenant, query.target, limit as i64 + 1],
            |row| {
                let detail: Option<String> = row.get(6)?;
                let at: i64 = row.get(1)?;
                Ok(AuditEntry {
                    seq: row.get(0)?,
                    at: chrono::DateTime::from_timestamp_micros(at)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    actor: row.get(2)?,
                    tenant: row.get(3)?,
                    action: row.get(4)?,
                    target: row.get(5)?,
                    detail: detail
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or_default(),
                })
            },
        )?;
        let mut entries: Vec<AuditEntry> = rows.collect::<Result<_, _>>()?;
        let next_cursor = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|entry| entry.seq.to_string())
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

tokio::task_local! {
    /// The key whose request the current task serves, for the engine's
    /// steps taken within it.
    static ACTOR: String;
}

/// Runs `work` with `actor` named as the actor of every job state change
/// it causes at once (a submission, the cancellation of a queued job);
/// what happens later, in the engine's own tasks, is the `engine`'s.
pub async fn acting_as<F: Future>(actor: String, work: F) -> F::Output {
    ACTOR.scope(actor, work).await
}

impl AuthStore {
    /// An [`EventObserver`](crate::events::EventObserver) that records
    /// every job state change (submitted, started, retry, completed,
    /// failed, timeout, canceled) in the audit trail.
    pub fn observer(self: &std::sync::Arc<Self>) -> crate::events::EventObserver {
        let store = std::sync::Arc::clone(self);
        crate::events::EventObserver::new(is_state_change, move |event| {
            let detail = Some(Detail::Event(event.data.clone()));
            let actor = ACTOR
                .try_with(Clone::clone)
                .unwrap_or_else(|_| "engine".to_owned());
            let job = event.job_id.map(|id| id.to_string());
            store.push_record(
                actor,
                event.tenant_id.as_deref(),
                event.data.name(),
                job.as_deref(),
                detail,
            );
        })
    }
}

/// The events that change a job's state.
fn is_state_change(data: &crate::events::EventData) -> bool {
    use crate::events::EventData;
    matches!(
        data,
        EventData::Submitted { .. }
            | EventData::Started { .. }
            | EventData::Retry { .. }
            | EventData::Completed { .. }
            | EventData::Failed { .. }
            | EventData::TimedOut { .. }
            | EventData::Canceled { .. }
    )
}
