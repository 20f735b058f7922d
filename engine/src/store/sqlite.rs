//! [`SqliteStore`]: jobs in one SQLite file, durable across crashes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;
use work_host_api::{Job, JobId};

use super::{Commit, Inserted, JobPage, JobQuery, Store, StoreError, Transition};
use crate::group_queue::GroupQueue;
use crate::id_map::IdMap;
use crate::retention::Retention;

/// The schema, one step per version; `PRAGMA user_version` records how
/// many have been applied. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, the whole job as JSON beside the columns it is looked up by.
    "CREATE TABLE jobs (
        id BLOB PRIMARY KEY NOT NULL,
        tenant_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        dead_letter INTEGER NOT NULL,
        idempotency_key TEXT,
        external_id TEXT,
        batch_id BLOB,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX jobs_by_tenant ON jobs (tenant_id, id);
    CREATE INDEX jobs_by_status ON jobs (tenant_id, status, id);
    CREATE INDEX jobs_by_namespace ON jobs (tenant_id, namespace, id);
    CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (tenant_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_by_external_id ON jobs (tenant_id, external_id, id)
        WHERE external_id IS NOT NULL;
    CREATE INDEX jobs_by_batch ON jobs (tenant_id, batch_id, id) WHERE batch_id IS NOT NULL;
    CREATE INDEX jobs_dead_letters ON jobs (tenant_id, id) WHERE dead_letter = 1;
    CREATE INDEX jobs_unfinished ON jobs (status)
        WHERE status IN ('pending', 'queued', 'running');",
    // 2: one status index serves both a tenant's listing by status and the
    // unfinished jobs at start: one B-tree fewer to update per insert and
    // per change of status.
    "DROP INDEX jobs_unfinished;
    DROP INDEX jobs_by_status;
    CREATE INDEX jobs_by_status ON jobs (status, tenant_id, id);",
];

/// The most changes committed together.
const MAX_GROUP: usize = 4096;

/// What a commit survives: how far SQLite goes before it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit is on disk (`fsync`) before it returns: it survives a
    /// crash of the process, of the OS and a power loss. One fsync per
    /// commit group; what it costs depends on the disk (about 1.5 ms on the
    /// development machine's virtual disk).
    #[default]
    Fsync,
    /// Every commit is in the OS's hands (the WAL file) before it returns,
    /// and fsynced at checkpoints (`synchronous = NORMAL`): it survives the
    /// process being killed, but the last commits may roll back after an
    /// OS crash or a power loss. No fsync on the path of a request.
    Process,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Self::Fsync),
            "process" => Ok(Self::Process),
            other => Err(format!("unknown durability `{other}` (fsync or process)")),
        }
    }
}

/// Jobs in a SQLite database file: what `work-engine serve` keeps its jobs
/// in by default.
///
/// - **Durable**: WAL mode; an insert or a transition returns once its
///   transaction is committed, and with [`Durability::Fsync`] (the
///   default) synced to disk, so a job the API accepted survives `kill -9`
///   and power loss ([`Durability::Process`]: `kill -9` only).
/// - **Decided in memory**: jobs that have not ended, and the last 16,384
///   that have, are kept in memory. A change of such a job (a claim, a
///   result, a cancellation) and the insert of a new job without an
///   idempotency key are decided there, by the caller, and handed to the
///   writer in the order they were decided; the caller waits for the
///   commit only when it asked for [`Commit::Durable`]. Reads of these
///   jobs touch no disk.
/// - **Group commit**: one writer thread owns the write connection; it
///   takes every change waiting for it, applies them in one transaction
///   and commits once, so under load one fsync covers many jobs. A job
///   changed several times in one group is written once, as it ends up.
/// - **Reads** of other jobs run on a small pool of read connections
///   beside the writer (WAL lets them read while it writes).
/// - **Migrations** are versioned and applied when the file is opened.
pub struct SqliteStore {
    path: PathBuf,
    /// The writer's work.
    queue: Arc<GroupQueue<Op>>,
    /// The writer, joined on drop once it has committed what is queued.
    thread: Option<std::thread::JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    /// Jobs as last decided: every one that has not ended, and the most
    /// recent ones that have. Changes are decided and handed to the writer
    /// under its write lock, so the writer sees them in decision order.
    cache: Arc<RwLock<Cache>>,
}

/// How many ended jobs stay in memory: a caller who waited for a job
/// usually reads it right after it ends. It must also exceed the ended
/// jobs whose rows are not written yet, or a read could find an evicted
/// job's older row: the scheduler keeps at most 4,096 job ends waiting
/// for a commit (`executor::RECORDS_IN_FLIGHT` batches), and every other
/// change of a job's end is waited for.
const RECENT: usize = 16_384;

/// Jobs in memory, as last decided.
#[derive(Default)]
struct Cache {
    /// Every job that has not ended.
    live: IdMap<Arc<Job>>,
    /// The last [`RECENT`] jobs that ended.
    recent: IdMap<Arc<Job>>,
    /// `recent`'s ids, oldest first (an id may be stale: already evicted
    /// or live again).
    order: std::collections::VecDeque<JobId>,
}

impl Cache {
    fn get(&self, id: &JobId) -> Option<Arc<Job>> {
        self.live.get(id).or_else(|| self.recent.get(id)).cloned()
    }

    fn put(&mut self, job: Arc<Job>) {
        let id = job.id;
        if job.status.is_terminal() {
            self.live.remove(&id);
            self.recent.insert(id, job);
            self.order.push_back(id);
            while self.order.len() > RECENT {
                if let Some(old) = self.order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        } else {
            self.recent.remove(&id);
            self.live.insert(id, job);
        }
    }

    fn remove(&mut self, id: &JobId) {
        self.live.remove(id);
        self.recent.remove(id);
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

type InsertReply = oneshot::Sender<Result<Vec<Inserted>, StoreError>>;
type TransitionReply = oneshot::Sender<Vec<Result<Arc<Job>, StoreError>>>;
type WriteReply = oneshot::Sender<Result<(), StoreError>>;

/// Work for the writer thread, in the order it was asked for.
enum Op {
    /// Rows of changes decided in memory, written as they are; answered
    /// (when anyone waits) once committed.
    Write(Vec<Row>, Option<WriteReply>),
    /// Jobs to insert that the writer decides on (an idempotency key to
    /// look up, a batch to insert all or none), with their JSON,
    /// serialized by the caller (off the writer).
    Insert(Vec<(Arc<Job>, String)>, InsertReply),
    /// Changes of jobs not in memory: the writer reads them.
    Transition(Vec<(JobId, Transition)>, TransitionReply),
    /// Answered once everything before it is committed.
    Flush(oneshot::Sender<()>),
    /// From now on, delete the jobs that ended longer ago than this.
    KeepFinishedFor(Duration),
}

/// A job to write as it is.
struct Row {
    job: Arc<Job>,
    /// Its JSON, when the caller serialized it; else the writer does.
    body: Option<String>,
    /// Not in the table yet.
    new: bool,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// What a caller whose commit failed is told (the writer logged why).
fn commit_failed() -> StoreError {
    StoreError::Backend("the commit failed".into())
}

impl SqliteStore {
    /// The job `sql` finds by a tenant (`?1`) and one of its names (`?2`).
    async fn read_one_by(
        &self,
        sql: &'static str,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.read(move |conn| {
            let body: Option<String> = conn
                .prepare_cached(sql)
                .map_err(backend)?
                .query_row(params![tenant, name], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            Ok(body.as_deref().map(decode).transpose()?.map(Arc::new))
        })
        .await
    }

    /// Opens (creating if needed) the database at `path` and brings its
    /// schema up to date.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the file cannot be opened or migrated,
    /// or was written by a newer version of work-engine.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::default())
    }

    /// [`SqliteStore::open`] with commits as durable as `durability`.
    ///
    /// # Errors
    ///
    /// As [`SqliteStore::open`].
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = connect(&path, false)?;
        let synchronous = match durability {
            Durability::Fsync => "FULL",
            Durability::Process => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(backend)?;
        migrate(&mut conn)?;
        let mut cache = Cache::default();
        for job in unfinished_in(&conn)? {
            cache.put(Arc::new(job));
        }
        let cache = Arc::new(RwLock::new(cache));
        let queue = Arc::new(GroupQueue::new(LINGER, MAX_GROUP));
        let writer = Writer {
            conn,
            cache: Arc::clone(&cache),
            retention: Retention::default(),
        };
        let thread = {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name("work-engine-sqlite".into())
                .spawn(move || writer.run(&queue))
                .map_err(backend)?
        };
        Ok(Self {
            path,
            queue,
            thread: Some(thread),
            readers: Mutex::new(Vec::new()),
            cache,
        })
    }

    /// Opens the database at `path` for reading only: no writer, nothing
    /// loaded into memory, nothing migrated. For a look at a data
    /// directory that a server may be using at the same time (the CLI's
    /// `jobs` and `dlq list` without `--server`). Every change is refused
    /// with [`StoreError::ReadOnly`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the file cannot be opened, or its
    /// schema is not the one this work-engine writes.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path, true)?;
        let version = schema_version(&conn)?;
        if version != MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the database is at schema version {version}; this work-engine reads {} \
                 (`work-engine serve` migrates an older one)",
                MIGRATIONS.len()
            )));
        }
        Ok(Self {
            path,
            queue: Arc::new(GroupQueue::new(LINGER, MAX_GROUP)),
            thread: None,
            readers: Mutex::new(vec![conn]),
            cache: Arc::default(),
        })
    }

    /// Opened with [`SqliteStore::open_read_only`].
    fn read_only(&self) -> bool {
        self.thread.is_none()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on, deletes the jobs that ended longer ago than `keep`
    /// (dead letters stay): at once, then after commits, a tenth of `keep`
    /// apart and at least once a minute. Without it, every job is kept;
    /// `serve` keeps 30 days unless told otherwise. Once deleted, a job is
    /// not found, its idempotency key and external id are free again, and
    /// a new job naming it in `depends_on` is refused.
    pub fn keep_finished_for(&self, keep: Duration) {
        self.queue.push(Op::KeepFinishedFor(keep), true);
    }

    async fn send<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.queue.push(op(reply), true);
        answer.await.ok()
    }

    /// Hands `rows` to the writer, and waits for their commit when
    /// `commit` asks for it.
    fn write(
        &self,
        rows: Vec<Row>,
        commit: Commit,
    ) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        let (reply, answer) = match commit {
            Commit::Durable => {
                let (reply, answer) = oneshot::channel();
                (Some(reply), Some(answer))
            }
            Commit::Ordered => (None, None),
        };
        let urgent = reply.is_some();
        self.queue.push(Op::Write(rows, reply), urgent);
        answer
    }

    /// Runs `read` on a pooled read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => connect(&self.path, true)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = read(&conn);
            (conn, result)
        })
        .await
        .map_err(backend)?;
        self.readers.lock().push(conn);
        result
    }
}

fn connect(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
    }
    Ok(conn)
}

/// How many migrations the database has had.
fn schema_version(conn: &Connection) -> Result<usize, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied = schema_version(conn)?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {applied}; this work-engine knows {}",
            MIGRATIONS.len()
        )));
    }
    for (version, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(backend)?;
        tx.execute_batch(migration).map_err(backend)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

fn decode(body: &str) -> Result<Job, StoreError> {
    serde_json::from_str(body).map_err(|err| backend(format!("corrupt job record: {err}")))
}

fn read_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM jobs WHERE id = ?1")
        .map_err(backend)?
        .query_row([&id.as_bytes()[..]], |row| row.get(0))
        .optional()
        .map_err(backend)?;
    body.as_deref().map(decode).transpose()
}

fn unfinished_in(conn: &Connection) -> Result<Vec<Job>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT body FROM jobs WHERE status IN ('pending', 'queued', 'running') ORDER BY id",
        )
        .map_err(backend)?;
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(backend)?;
    rows.map(|body| decode(&body.map_err(backend)?)).collect()
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take() {
            // What was queued is committed before the store is gone: an
            // orderly stop loses no change, waited for or not.
            let _ = thread.join();
        }
    }
}

/// How long a change no one waits for may wait for company before the
/// writer commits it anyway: a job inserted, claimed and finished in quick
/// succession ([`Commit::Ordered`]) costs one commit and one row written.
const LINGER: Duration = Duration::from_millis(20);

/// The writer thread: owns the write connection.
struct Writer {
    conn: Connection,
    cache: Arc<RwLock<Cache>>,
    /// How long ended jobs are kept.
    retention: Retention,
}

impl Writer {
    fn run(mut self, queue: &GroupQueue<Op>) {
        while let Some(group) = queue.next_group() {
            self.commit_group(group);
        }
    }

    /// Applies `ops` in one transaction, commits once, then answers each.
    fn commit_group(&mut self, ops: Vec<Op>) {
        let cache = Arc::clone(&self.cache);
        let mut rows = Rows::default();
        let outcome = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            // Jobs the writer changed in this group, newest version.
            let mut changed: HashMap<JobId, Arc<Job>> = HashMap::new();
            let mut answers = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Write(new_rows, reply) => {
                        let answer = answers.len();
                        answers.push(Answer::Write(reply, Ok(())));
                        for row in new_rows {
                            rows.put(row, answer);
                        }
                    }
                    Op::Insert(jobs, reply) => {
                        rows.write(&tx, &mut answers)?;
                        let result = insert(&tx, &jobs, &cache, &changed);
                        if let Ok(inserted) = &result {
                            for ((job, _), inserted) in jobs.iter().zip(inserted) {
                                if matches!(inserted, Inserted::New) {
                                    changed.insert(job.id, Arc::clone(job));
                                }
                            }
                        }
                        answers.push(Answer::Insert(reply, result));
                    }
                    Op::Transition(changes, reply) => {
                        rows.write(&tx, &mut answers)?;
                        let results = changes
                            .into_iter()
                            .map(|(id, change)| {
                                let job = transition(&tx, id, change, &cache, &changed)?;
                                changed.insert(id, Arc::clone(&job));
                                Ok(job)
                            })
                            .collect();
                        answers.push(Answer::Transition(reply, results));
                    }
                    Op::Flush(reply) => answers.push(Answer::Flush(reply)),
                    Op::KeepFinishedFor(keep) => self.retention.keep_for(keep),
                }
            }
            rows.write(&tx, &mut answers)?;
            tx.commit().map_err(backend)?;
            Ok::<_, StoreError>((answers, changed))
        })();
        match outcome {
            Ok((answers, published)) => {
                {
                    let mut cache = self.cache.write();
                    for job in published.into_values() {
                        cache.put(job);
                    }
                    for id in &rows.refused {
                        cache.remove(id);
                    }
                }
                // Before the answers, so that a flush sees the jobs gone.
                self.prune_if_due();
                for answer in answers {
                    answer.send();
                }
            }
            Err(err) => {
                // Nothing of the group was committed. The answers went with
                // the failed transaction: their callers find their reply
                // channels closed and report a storage failure.
                tracing::error!(%err, "sqlite commit failed");
                // Jobs first inserted by rows of this group were never
                // stored, and must not stay in memory either.
                let mut cache = self.cache.write();
                for id in &rows.inserted {
                    cache.remove(id);
                }
            }
        }
    }

    /// Deletes the jobs that ended before the retention, if it is time:
    /// a tenth of the retention after the last time, and at least once a
    /// minute while anything is written.
    fn prune_if_due(&mut self) {
        let Some(before) = self.retention.due() else {
            return;
        };
        match prune(&self.conn, before) {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => {
                tracing::debug!(jobs = gone.len(), "deleted jobs past their retention");
                let mut cache = self.cache.write();
                for id in &gone {
                    cache.remove(id);
                }
            }
            Err(err) => tracing::error!(%err, "could not delete jobs past their retention"),
        }
    }
}

/// Deletes the jobs that ended before `before` (dead letters stay), a
/// chunk per transaction, and returns their ids. Ids are UUID v7s, ordered
/// by submission time, and the table is kept in id order: each chunk walks
/// from the oldest job and stops at the first submitted after `before`,
/// so the jobs submitted since are never read.
fn prune(
    conn: &Connection,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<JobId>, StoreError> {
    const CHUNK: usize = 5_000;
    // The smallest id of a job submitted at `before`: its 48-bit
    // millisecond timestamp, then zeros.
    let millis = u64::try_from(before.timestamp_millis()).unwrap_or(0);
    let mut bound = [0u8; 16];
    bound[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    let before = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut delete = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE id IN ( \
                 SELECT id FROM jobs WHERE id < ?1 AND dead_letter = 0 \
                 AND status IN ('succeeded', 'failed', 'canceled', 'timeout') \
                 AND julianday(json_extract(body, '$.finished_at')) < julianday(?2) \
                 ORDER BY id LIMIT ?3) \
             RETURNING id",
        )
        .map_err(backend)?;
    let mut gone = Vec::new();
    loop {
        let ids = delete
            .query_map(params![&bound[..], before, CHUNK], |row| {
                row.get::<_, Vec<u8>>(0)
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        let n = ids.len();
        gone.extend(
            ids.into_iter()
                .filter_map(|bytes| uuid::Uuid::from_slice(&bytes).ok()),
        );
        if n < CHUNK {
            return Ok(gone);
        }
    }
}

/// Rows of one group not written yet: one per job, the newest, so that a
/// job inserted, claimed and finished within one group is written once.
#[derive(Default)]
struct Rows {
    rows: Vec<(Row, Vec<usize>)>,
    at: HashMap<JobId, usize>,
    /// New jobs whose id turned out to be taken: refused, and to be
    /// dropped from memory once the group is committed.
    refused: Vec<JobId>,
    /// Every new job of the group: dropped from memory if it fails.
    inserted: Vec<JobId>,
}

impl Rows {
    /// Adds `row`, asked for by `answers[answer]`, in place of the job's
    /// older row if it has one.
    fn put(&mut self, row: Row, answer: usize) {
        match self.at.get(&row.job.id) {
            Some(&i) => {
                let (older, answers) = &mut self.rows[i];
                older.job = row.job;
                older.body = row.body;
                answers.push(answer);
            }
            None => {
                if row.new {
                    self.inserted.push(row.job.id);
                }
                self.at.insert(row.job.id, self.rows.len());
                self.rows.push((row, vec![answer]));
            }
        }
    }

    /// Writes every row (before anything that reads the table, and at the
    /// end of the group).
    fn write(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        answers: &mut [Answer],
    ) -> Result<(), StoreError> {
        self.at.clear();
        for (row, asked) in self.rows.drain(..) {
            let job = &row.job;
            let body = match row.body {
                Some(body) => body,
                None => serde_json::to_string(&**job).map_err(backend)?,
            };
            if !row.new {
                update(tx, job, &body)?;
                continue;
            }
            match insert_row(tx, job, &body) {
                Ok(()) => {}
                Err(StoreError::Duplicate(id)) => {
                    self.refused.push(id);
                    for answer in asked {
                        if let Some(Answer::Write(_, result)) = answers.get_mut(answer) {
                            *result = Err(StoreError::Duplicate(id));
                        }
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

enum Answer {
    Write(Option<WriteReply>, Result<(), StoreError>),
    Insert(InsertReply, Result<Vec<Inserted>, StoreError>),
    Transition(TransitionReply, Vec<Result<Arc<Job>, StoreError>>),
    Flush(oneshot::Sender<()>),
}

impl Answer {
    fn send(self) {
        match self {
            Self::Write(reply, result) => {
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                } else if let Err(err) = result {
                    tracing::error!(%err, "a change no one waited for was refused");
                }
            }
            Self::Flush(reply) => {
                let _ = reply.send(());
            }
            Self::Insert(reply, result) => {
                let _ = reply.send(result);
            }
            Self::Transition(reply, results) => {
                let _ = reply.send(results);
            }
        }
    }
}

/// The job as it stands in this transaction.
fn current(
    tx: &Connection,
    id: JobId,
    cache: &RwLock<Cache>,
    changed: &HashMap<JobId, Arc<Job>>,
) -> Result<Option<Arc<Job>>, StoreError> {
    if let Some(job) = changed.get(&id) {
        return Ok(Some(Arc::clone(job)));
    }
    if let Some(job) = cache.read().get(&id) {
        return Ok(Some(job));
    }
    Ok(read_job(tx, id)?.map(Arc::new))
}

/// All or none (a batch under a savepoint): the group around it goes on
/// either way.
fn insert(
    tx: &rusqlite::Transaction<'_>,
    jobs: &[(Arc<Job>, String)],
    cache: &RwLock<Cache>,
    changed: &HashMap<JobId, Arc<Job>>,
) -> Result<Vec<Inserted>, StoreError> {
    // One row's INSERT is atomic by itself; several need a savepoint.
    let savepoint = jobs.len() > 1;
    let statement = |sql: &str| -> Result<(), StoreError> {
        tx.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
            .map_err(backend)
    };
    if savepoint {
        statement("SAVEPOINT insert_jobs")?;
    }
    let result = insert_rows(tx, jobs, cache, changed);
    if savepoint {
        if result.is_err() {
            statement("ROLLBACK TO insert_jobs")?;
        }
        statement("RELEASE insert_jobs")?;
    }
    result
}

fn insert_rows(
    tx: &rusqlite::Transaction<'_>,
    jobs: &[(Arc<Job>, String)],
    cache: &RwLock<Cache>,
    changed: &HashMap<JobId, Arc<Job>>,
) -> Result<Vec<Inserted>, StoreError> {
    let mut outcome = Vec::with_capacity(jobs.len());
    let mut first_with_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut by_key = tx
        .prepare_cached("SELECT id FROM jobs WHERE tenant_id = ?1 AND idempotency_key = ?2")
        .map_err(backend)?;
    let mut exists = tx
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")
        .map_err(backend)?;
    for (i, (job, body)) in jobs.iter().enumerate() {
        if changed.contains_key(&job.id) {
            return Err(StoreError::Duplicate(job.id));
        }
        if let Some(key) = job.constraints.idempotency_key.as_deref() {
            // A duplicate id is refused before its key is looked at; for
            // a job without a key the primary key refuses it below.
            if exists.exists([&job.id.as_bytes()[..]]).map_err(backend)? {
                return Err(StoreError::Duplicate(job.id));
            }
            if let Some(&first) = first_with_key.get(&(job.tenant_id.as_str(), key)) {
                outcome.push(Inserted::Existing(Arc::clone(&jobs[first].0)));
                continue;
            }
            let stored: Option<Vec<u8>> = by_key
                .query_row(params![job.tenant_id.as_str(), key], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            if let Some(stored) = stored {
                let id = JobId::from_slice(&stored).map_err(backend)?;
                if let Some(existing) = current(tx, id, cache, changed)? {
                    outcome.push(Inserted::Existing(existing));
                    continue;
                }
            }
            first_with_key.insert((job.tenant_id.as_str(), key), i);
        }
        insert_row(tx, job, body)?;
        outcome.push(Inserted::New);
    }
    Ok(outcome)
}

/// Inserts `job`'s row; [`StoreError::Duplicate`] when its id is taken.
fn insert_row(tx: &Connection, job: &Job, body: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO jobs (id, tenant_id, namespace, kind, status, dead_letter,
            idempotency_key, external_id, batch_id, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .map_err(backend)?
    .execute(params![
        &job.id.as_bytes()[..],
        job.tenant_id.as_str(),
        job.namespace.as_str(),
        job.kind.as_str(),
        job.status.as_str(),
        job.dead_letter,
        job.constraints.idempotency_key.as_deref(),
        job.external_id.as_deref(),
        job.batch_id.as_ref().map(|b| &b.as_bytes()[..]),
        body,
    ])
    .map_err(|err| match err.sqlite_error().map(|e| e.extended_code) {
        // The primary key: the id exists (the store's own check).
        Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => StoreError::Duplicate(job.id),
        _ => backend(err),
    })
    .map(drop)
}

/// Rewrites `job`'s row: the columns a change can touch, and the body.
fn update(tx: &Connection, job: &Job, body: &str) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE jobs SET status = ?2, dead_letter = ?3, body = ?4 WHERE id = ?1")
        .map_err(backend)?
        .execute(params![
            &job.id.as_bytes()[..],
            job.status.as_str(),
            job.dead_letter,
            body
        ])
        .map_err(backend)
        .map(drop)
}

fn transition(
    tx: &Connection,
    id: JobId,
    change: Transition,
    cache: &RwLock<Cache>,
    changed: &HashMap<JobId, Arc<Job>>,
) -> Result<Arc<Job>, StoreError> {
    let mut job = current(tx, id, cache, changed)?.ok_or(StoreError::NotFound(id))?;
    change.apply(Arc::make_mut(&mut job))?;
    let body = serde_json::to_string(&*job).map_err(backend)?;
    update(tx, &job, &body)?;
    Ok(job)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert(
        &self,
        jobs: Vec<Arc<Job>>,
        commit: Commit,
    ) -> Result<Vec<Inserted>, StoreError> {
        if self.read_only() {
            return Err(StoreError::ReadOnly);
        }
        let jobs = jobs
            .into_iter()
            .map(|job| {
                let body = serde_json::to_string(&*job).map_err(backend)?;
                Ok((job, body))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // One job without a key is decided in memory: only an id already
        // held could refuse it (the writer checks the table again).
        if let [(job, _)] = jobs.as_slice()
            && job.constraints.idempotency_key.is_none()
        {
            let answer = {
                let mut cache = self.cache.write();
                if cache.get(&job.id).is_some() {
                    return Err(StoreError::Duplicate(job.id));
                }
                cache.put(Arc::clone(job));
                let rows = jobs
                    .into_iter()
                    .map(|(job, body)| Row {
                        job,
                        body: Some(body),
                        new: true,
                    })
                    .collect();
                self.write(rows, commit)
            };
            if let Some(answer) = answer {
                answer.await.unwrap_or_else(|_| Err(commit_failed()))?;
            }
            return Ok(vec![Inserted::New]);
        }
        self.send(|reply| Op::Insert(jobs, reply))
            .await
            .unwrap_or_else(|| Err(commit_failed()))
    }

    async fn get(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        if let Some(job) = self.cache.read().get(&id) {
            return Ok(Some(job));
        }
        self.read(move |conn| Ok(read_job(conn, id)?.map(Arc::new)))
            .await
    }

    async fn get_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        self.read_one_by(
            "SELECT body FROM jobs WHERE tenant_id = ?1 AND external_id = ?2
             ORDER BY id DESC LIMIT 1",
            tenant,
            external_id,
        )
        .await
    }

    async fn get_by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        self.read_one_by(
            "SELECT body FROM jobs WHERE tenant_id = ?1 AND idempotency_key = ?2",
            tenant,
            key,
        )
        .await
    }

    async fn list(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let cursor = query.cursor_id()?;
        let limit = query.page_size();
        let query = query.clone();
        self.read(move |conn| {
            let mut sql = String::from("SELECT body FROM jobs WHERE tenant_id = ?");
            let mut args = vec![SqlValue::Text(query.tenant_id.clone())];
            if let Some(namespace) = &query.namespace {
                sql.push_str(" AND namespace = ?");
                args.push(SqlValue::Text(namespace.clone()));
            }
            if let Some(status) = query.status {
                sql.push_str(" AND status = ?");
                args.push(SqlValue::Text(status.as_str().to_owned()));
            }
            if let Some(kind) = &query.kind {
                sql.push_str(" AND kind = ?");
                args.push(SqlValue::Text(kind.as_str().to_owned()));
            }
            if query.dead_letter {
                sql.push_str(" AND dead_letter = 1");
            }
            if let Some(batch) = query.batch_id {
                sql.push_str(" AND batch_id = ?");
                args.push(SqlValue::Blob(batch.as_bytes().to_vec()));
            }
            if let Some(cursor) = cursor {
                sql.push_str(" AND id < ?");
                args.push(SqlValue::Blob(cursor.as_bytes().to_vec()));
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(SqlValue::Integer(limit as i64 + 1));
            let mut statement = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(args), |row| {
                    row.get::<_, String>(0)
                })
                .map_err(backend)?;
            let mut jobs = Vec::with_capacity(limit);
            let mut next_cursor = None;
            for body in rows {
                if jobs.len() == limit {
                    next_cursor = jobs.last().map(|last: &Arc<Job>| last.id.to_string());
                    break;
                }
                jobs.push(Arc::new(decode(&body.map_err(backend)?)?));
            }
            Ok(JobPage { jobs, next_cursor })
        })
        .await
    }

    async fn transition(&self, id: JobId, change: Transition) -> Result<Arc<Job>, StoreError> {
        let mut results = self
            .transition_batch(vec![(id, change)], Commit::Durable)
            .await;
        results.pop().unwrap_or(Err(StoreError::NotFound(id)))
    }

    async fn transition_batch(
        &self,
        changes: Vec<(JobId, Transition)>,
        commit: Commit,
    ) -> Vec<Result<Arc<Job>, StoreError>> {
        if self.read_only() {
            return changes.iter().map(|_| Err(StoreError::ReadOnly)).collect();
        }
        let mut results = Vec::with_capacity(changes.len());
        // Changes of jobs not in memory, for the writer to decide, with
        // where their results go.
        let mut undecided = Vec::new();
        let mut places = Vec::new();
        let answer = {
            let mut cache = self.cache.write();
            let mut rows = Vec::with_capacity(changes.len());
            for (id, change) in changes {
                let Some(mut job) = cache.get(&id) else {
                    places.push(results.len());
                    undecided.push((id, change));
                    results.push(Err(StoreError::NotFound(id)));
                    continue;
                };
                results.push(change.apply(Arc::make_mut(&mut job)).map(|()| {
                    cache.put(Arc::clone(&job));
                    rows.push(Row {
                        job: Arc::clone(&job),
                        body: None,
                        new: false,
                    });
                    job
                }));
            }
            (!rows.is_empty())
                .then(|| self.write(rows, commit))
                .flatten()
        };
        if !undecided.is_empty() {
            let count = undecided.len();
            let decided = self
                .send(|reply| Op::Transition(undecided, reply))
                .await
                .unwrap_or_else(|| (0..count).map(|_| Err(commit_failed())).collect());
            for (place, result) in places.into_iter().zip(decided) {
                results[place] = result;
            }
        }
        if let Some(answer) = answer
            && let Err(err) = answer.await.unwrap_or_else(|_| Err(commit_failed()))
        {
            for result in &mut results {
                if result.is_ok() {
                    *result = Err(err.clone());
                }
            }
        }
        results
    }

    async fn flush(&self) -> Result<(), StoreError> {
        if self.read_only() {
            return Ok(());
        }
        self.send(Op::Flush).await.ok_or_else(commit_failed)
    }

    async fn unfinished(&self) -> Result<Vec<Arc<Job>>, StoreError> {
        if self.read_only() {
            return self
                .read(|conn| Ok(unfinished_in(conn)?.into_iter().map(Arc::new).collect()))
                .await;
        }
        let mut jobs: Vec<Arc<Job>> = self.cache.read().live.values().cloned().collect();
        jobs.sort_by_key(|job| job.id);
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use work_host_api::JobStatus;

    #[test]
    fn every_status_is_one_the_unfinished_index_knows_or_terminal() {
        for status in JobStatus::ALL {
            let listed = ["pending", "queued", "running"].contains(&status.as_str());
            assert_eq!(listed, !status.is_terminal(), "{status:?}");
        }
    }
}
