//! [`MemoryStore`]: jobs in sharded hash maps with per-tenant indexes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::id_map::{IdMap, NameMap, spread};
use crate::spinning_mutex::SpinningMutex;
use work_host_api::{CompactString, Job, JobId, JobStatus};

use super::{Commit, Inserted, JobPage, JobQuery, Store, StoreError, Transition};

const SHARDS: usize = 32;

/// Jobs in memory, for embedding and tests; gone when the process ends.
///
/// It keeps every job that has not finished, every dead letter, and the
/// latest finished jobs up to a bound ([`MemoryStore::DEFAULT_KEEP_FINISHED`], or
/// [`MemoryStore::keeping_finished`]): an engine that runs for days must
/// not grow without end. The oldest finished jobs go first, a few
/// thousand at a time; once gone, `get` answers none, their idempotency
/// keys and external ids are free again, and a job naming one in
/// `depends_on` is refused as an unknown dependency.
///
/// Jobs live in 32 shards, each behind its own short-held lock, so claims
/// and completions on different jobs rarely contend. Each tenant has its
/// own index (all jobs, by status, by namespace, dead letters, idempotency
/// keys, external ids), so a listing reads one tenant's index instead of
/// every job. No lock is held across an `.await`.
///
/// Lock order: a tenant's index, then a shard, then the tenant's list of
/// status changes not yet entered in its index (`Tenant`); never the
/// other way round. The map of tenants is only looked in and let go,
/// never held while another lock is taken.
pub struct MemoryStore {
    shards: [SpinningMutex<IdMap<Arc<Job>>>; SHARDS],
    tenants: RwLock<NameMap<CompactString, Arc<Tenant>>>,
    keep_finished: usize,
    /// Finished jobs (not dead letters), in the order they finished, with
    /// their `finished_at`: a job revived and finished again is entered
    /// again, and only its latest entry counts.
    finished: Mutex<VecDeque<(JobId, DateTime<Utc>)>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::keeping_finished(Self::DEFAULT_KEEP_FINISHED)
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

/// A tenant's index, and the status changes made to its jobs but not yet
/// entered in it.
///
/// A change of status (a claim, a finish) is made under the job's shard
/// lock and entered in the index only if the index is free then; if not,
/// whoever holds the index, or locks it next, enters it first. A runner
/// that waited for the index instead waited behind whole submissions: a
/// batch of 500 jobs holds it for some hundreds of microseconds, a wait
/// long enough to put the runner's thread to sleep, with its core idle.
/// Recorded under the shard lock, a job's changes are listed in the order
/// they were made, whichever threads made them.
#[derive(Default)]
struct Tenant {
    index: SpinningMutex<TenantIndex>,
    moves: SpinningMutex<Vec<Move>>,
}

/// A job's change of status, to enter in its tenant's index.
struct Move {
    id: JobId,
    before: JobStatus,
    status: JobStatus,
    dead_letter: bool,
}

impl Tenant {
    /// The index, with every change made so far entered.
    fn lock(&self) -> MutexGuard<'_, TenantIndex> {
        let mut index = self.index.lock();
        self.enter_moves(&mut index);
        index
    }

    fn enter_moves(&self, index: &mut TenantIndex) {
        // Swapped out, so runners recording changes wait only for the swap.
        let mut moves = std::mem::take(&mut index.entering);
        std::mem::swap(&mut moves, &mut *self.moves.lock());
        for change in moves.drain(..) {
            index.moved(change.id, change.before, change.status, change.dead_letter);
        }
        index.entering = moves;
    }

    /// Enters the changes made so far if the index is free; its holder
    /// (or the next) does otherwise.
    fn try_enter_moves(&self) {
        if let Some(mut index) = self.index.try_lock() {
            self.enter_moves(&mut index);
        }
    }
}

/// One tenant's jobs, ordered by id (so by submission time).
#[derive(Default)]
struct TenantIndex {
    all: Ascending,
    by_status: StatusIndex,
    by_namespace: NameMap<CompactString, Ascending>,
    dead_letters: BTreeSet<Key>,
    idempotency: NameMap<String, JobId>,
    external: NameMap<String, JobId>,
    /// An empty list, kept for its room: swapped with the tenant's list
    /// of changes to enter them.
    entering: Vec<Move>,
}

/// A job id as the ordered indexes keep it: the UUID's 128 bits as one
/// integer, which orders as the id does (big-endian) and compares in an
/// instruction or two, where a `Uuid` compares its 16 bytes through a
/// call to `memcmp`.
type Key = u128;

fn key(id: &JobId) -> Key {
    id.as_u128()
}

fn id_of(key: &Key) -> JobId {
    JobId::from_u128(*key)
}

/// Ids that are only ever added, nearly in order (UUID v7 ids grow with
/// time; concurrent submitters interleave a little), and leave in batches
/// from the front, oldest first: a sorted ring buffer, half the memory of
/// a B-tree set, appended to at the back and emptied from the front
/// without moving the ids that stay.
#[derive(Default)]
struct Ascending(VecDeque<Key>);

impl Ascending {
    fn insert(&mut self, id: JobId) {
        let id = key(&id);
        match self.0.back() {
            Some(last) if *last >= id => {
                if let Err(at) = self.0.binary_search(&id) {
                    self.0.insert(at, id);
                }
            }
            _ => self.0.push_back(id),
        }
    }

    /// The ids below `cursor` (all without one), newest first.
    fn below(&self, cursor: Option<Key>) -> impl Iterator<Item = JobId> {
        let end = cursor.map_or(self.0.len(), |c| self.0.partition_point(|id| *id < c));
        self.0.range(..end).rev().map(id_of)
    }

    fn remove(&mut self, id: &JobId) {
        if let Ok(at) = self.0.binary_search(&key(id)) {
            self.0.remove(at);
        }
    }

    /// Removes the ids in `gone` (sorted) in one pass over the stretch
    /// between the first and the last of them.
    ///
    /// The ids that leave are the oldest finished jobs, nearly all of them
    /// at the front: the few ids among them that stay are moved up to the
    /// stretch's end, and the front of the ring given up, so the ids after
    /// the stretch are neither looked at nor moved. A pass over the whole
    /// set cost a `tool_call` job about 650 instructions (three sets of
    /// 100,000 ids looked at for each 12,500 retired), and a pass over the
    /// stretch followed by moving the rest down about 400 in `memcpy`.
    fn remove_sorted(&mut self, gone: &[Key]) {
        let (Some(first), Some(last)) = (gone.first(), gone.last()) else {
            return;
        };
        let start = self.0.partition_point(|id| id < first);
        let end = self.0.partition_point(|id| id <= last);
        let mut next = gone.iter().rev().peekable();
        let mut kept = end;
        for read in (start..end).rev() {
            let id = self.0[read];
            while next.next_if(|g| **g > id).is_some() {}
            if next.next_if_eq(&&id).is_none() {
                kept -= 1;
                self.0[kept] = id;
            }
        }
        self.0.drain(start..kept);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A tenant's ids by status.
///
/// Ids of jobs that have not finished arrive nearly in order and leave
/// from anywhere as jobs start and end: an [`Active`] set each. Finished
/// ids gather at the end (ids grow with time, and jobs finish in roughly
/// that order) and leave in batches as they are retired: a sorted `Vec`
/// each, which takes a new id with a push instead of a walk down a deep,
/// cold tree. With 100,000 finished jobs kept and every status in a B-tree
/// set, the status index cost a `tool_call` job 1.7–3.4 µs of CPU in
/// `cargo bench --bench scheduler` (measured by turning its updates off).
#[derive(Default)]
struct StatusIndex {
    active: [Active; JobStatus::ALL.len()],
    finished: [Ascending; JobStatus::ALL.len()],
}

impl StatusIndex {
    fn insert(&mut self, status: JobStatus, id: JobId) {
        if status.is_terminal() {
            self.finished[status as usize].insert(id);
        } else {
            self.active[status as usize].insert(key(&id));
        }
    }

    /// Removes one id: cheap for an active status; for a finished one
    /// (a dead letter revived) it moves the ids after it.
    fn remove(&mut self, status: JobStatus, id: &JobId) {
        if status.is_terminal() {
            self.finished[status as usize].remove(id);
        } else {
            self.active[status as usize].remove(key(id));
        }
    }

    /// Removes the finished jobs `ids` (sorted), one pass over each
    /// finished set.
    fn remove_finished(&mut self, ids: &[Key]) {
        for set in &mut self.finished {
            set.remove_sorted(ids);
        }
    }

    /// The ids of `status` below `cursor`, newest first.
    fn below(
        &self,
        status: JobStatus,
        cursor: Option<Key>,
    ) -> Box<dyn Iterator<Item = JobId> + '_> {
        if status.is_terminal() {
            Box::new(self.finished[status as usize].below(cursor))
        } else {
            Box::new(self.active[status as usize].below(cursor))
        }
    }
}

/// Ids that arrive nearly in order and leave from anywhere: the jobs of
/// one unfinished status (pending, queued, running). A sorted `Vec` in
/// which an id that leaves is only marked gone; the marks are swept out
/// once they outnumber the ids still in the set, so each arrival and
/// departure costs a push or a binary search, and a sweep's moves spread
/// over the departures before it come to about one each.
///
/// Every job passes through two of these sets (queued, then running),
/// in and out: four B-tree operations a job in a B-tree set, some 700
/// instructions an insert alone, on nodes gone cold since the last time.
#[derive(Default)]
struct Active {
    ids: Vec<Key>,
    /// Whether the id at the same place has left.
    gone: Vec<bool>,
    live: usize,
}

impl Active {
    fn insert(&mut self, id: Key) {
        match self.ids.last() {
            Some(last) if *last >= id => match self.ids.binary_search(&id) {
                Ok(at) => {
                    // Back again (a retry requeued): its place is kept.
                    if std::mem::replace(&mut self.gone[at], false) {
                        self.live += 1;
                    }
                }
                Err(at) => {
                    self.ids.insert(at, id);
                    self.gone.insert(at, false);
                    self.live += 1;
                }
            },
            _ => {
                self.ids.push(id);
                self.gone.push(false);
                self.live += 1;
            }
        }
    }

    fn remove(&mut self, id: Key) {
        let Ok(at) = self.ids.binary_search(&id) else {
            return;
        };
        if std::mem::replace(&mut self.gone[at], true) {
            return;
        }
        self.live -= 1;
        // At least 32 marks between sweeps, so a small set (a tenant's
        // running jobs) is not swept at every departure.
        if self.ids.len() >= 2 * self.live + 32 {
            let mut gone = self.gone.iter();
            // `retain` visits each id once, in order.
            self.ids.retain(|_| gone.next().is_some_and(|gone| !gone));
            self.gone.clear();
            self.gone.resize(self.ids.len(), false);
            // A tenant's burst of a million queued jobs, once run, does
            // not keep its 16 MiB for good.
            if self.ids.capacity() > 4 * self.ids.len() + 1024 {
                self.ids.shrink_to(2 * self.ids.len());
                self.gone.shrink_to(2 * self.ids.len());
            }
        }
    }

    /// The ids below `cursor` (all without one), newest first.
    fn below(&self, cursor: Option<Key>) -> impl Iterator<Item = JobId> + '_ {
        let end = cursor.map_or(self.ids.len(), |c| self.ids.partition_point(|id| *id < c));
        self.ids[..end]
            .iter()
            .zip(&self.gone[..end])
            .rev()
            .filter(|&(_, gone)| !gone)
            .map(|(id, _)| id_of(id))
    }
}

/// The ids of `set` below `cursor`, newest first.
fn below(set: &BTreeSet<Key>, cursor: Option<Key>) -> impl Iterator<Item = JobId> {
    match cursor {
        Some(cursor) => set.range(..cursor),
        None => set.range(..),
    }
    .rev()
    .map(id_of)
}

impl TenantIndex {
    fn add(&mut self, job: &Job) {
        self.all.insert(job.id);
        self.by_status.insert(job.status, job.id);
        self.by_namespace
            .entry(job.namespace.clone())
            .or_default()
            .insert(job.id);
        if job.dead_letter {
            self.dead_letters.insert(key(&job.id));
        }
        if let Some(key) = &job.constraints.idempotency_key {
            self.idempotency.insert(key.clone(), job.id);
        }
        if let Some(external) = &job.external_id {
            self.external.insert(external.clone(), job.id);
        }
    }

    /// Moves `id` from the status set of `before` to that of `status`,
    /// and into or out of the dead letters.
    fn moved(&mut self, id: JobId, before: JobStatus, status: JobStatus, dead_letter: bool) {
        if before != status {
            self.by_status.remove(before, &id);
            self.by_status.insert(status, id);
        }
        if dead_letter {
            self.dead_letters.insert(key(&id));
        } else if !self.dead_letters.is_empty() {
            self.dead_letters.remove(&key(&id));
        }
    }

    /// Forgets the jobs `leaving`, finished, which have left the store.
    fn forget(&mut self, leaving: &Leaving<'_>) {
        self.all.remove_sorted(&leaving.ids);
        for (namespace, gone) in &leaving.by_namespace {
            if let Some(ids) = self.by_namespace.get_mut(*namespace) {
                ids.remove_sorted(gone);
                if ids.is_empty() {
                    self.by_namespace.remove(*namespace);
                }
            }
        }
        self.by_status.remove_finished(&leaving.ids);
        for job in leaving.jobs {
            // A key or external id may name a newer job by now.
            if let Some(key) = &job.constraints.idempotency_key
                && self.idempotency.get(key) == Some(&job.id)
            {
                self.idempotency.remove(key);
            }
            if let Some(external) = &job.external_id
                && self.external.get(external) == Some(&job.id)
            {
                self.external.remove(external);
            }
        }
    }
}

/// One tenant's finished jobs leaving the store, their ids sorted as
/// [`TenantIndex::forget`] takes them: sorted before the index is locked,
/// which is then held only for its own passes. Sorting 12,500 jobs under
/// it made a submission wait about 2 ms for it.
struct Leaving<'a> {
    jobs: &'a [Arc<Job>],
    ids: Vec<Key>,
    by_namespace: NameMap<&'a str, Vec<Key>>,
}

impl<'a> Leaving<'a> {
    fn new(jobs: &'a [Arc<Job>]) -> Self {
        debug_assert!(jobs.iter().all(|job| job.status.is_terminal()));
        // One sort, by id; each namespace's ids then come out in order.
        // The jobs come in the order they finished, which is nearly that of
        // their ids (given in order of submission): a stable sort finds
        // the runs already in order and merges them, where an unstable one
        // sorted from scratch.
        let mut gone: Vec<(Key, &str)> = jobs
            .iter()
            .map(|job| (key(&job.id), job.namespace.as_str()))
            .collect();
        gone.sort_by_key(|&(id, _)| id);
        let ids = gone.iter().map(|&(id, _)| id).collect();
        // By namespace through a hash map: sorting the jobs by their
        // namespace's name compared strings some 13 times a job.
        let mut by_namespace: NameMap<&str, Vec<Key>> = NameMap::default();
        for (id, namespace) in gone {
            by_namespace.entry(namespace).or_default().push(id);
        }
        Self {
            jobs,
            ids,
            by_namespace,
        }
    }
}

impl MemoryStore {
    /// How many finished jobs [`MemoryStore::new`] keeps.
    pub const DEFAULT_KEEP_FINISHED: usize = 100_000;

    /// An empty store that keeps the latest [`MemoryStore::DEFAULT_KEEP_FINISHED`]
    /// finished jobs.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps the latest `keep` finished jobs (at least
    /// one).
    ///
    /// ```
    /// use work_engine::store::MemoryStore;
    ///
    /// // Enough for a day of a job a second.
    /// let store = MemoryStore::keeping_finished(86_400);
    /// ```
    pub fn keeping_finished(keep: usize) -> Self {
        Self {
            shards: Default::default(),
            tenants: RwLock::default(),
            keep_finished: keep.max(1),
            finished: Mutex::new(VecDeque::new()),
        }
    }

    fn shard(&self, id: &JobId) -> &SpinningMutex<IdMap<Arc<Job>>> {
        &self.shards[spread(id) as usize % SHARDS]
    }

    fn tenant(&self, tenant: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().get(tenant).cloned()
    }

    /// The job of `tenant` that `find` names in its index.
    fn read_by(
        &self,
        tenant: &str,
        find: impl FnOnce(&TenantIndex) -> Option<JobId>,
    ) -> Option<Arc<Job>> {
        let id = find(&self.tenant(tenant)?.lock())?;
        self.read(&id)
    }

    fn tenant_or_new(&self, tenant: &str) -> Arc<Tenant> {
        if let Some(index) = self.tenant(tenant) {
            return index;
        }
        Arc::clone(self.tenants.write().entry(tenant.into()).or_default())
    }

    /// Applies each change under its shard's lock, and records the change
    /// of status for its tenant's index there too (see [`Tenant`]).
    fn apply_all(&self, changes: Vec<(JobId, Transition)>) -> Vec<Result<Arc<Job>, StoreError>> {
        let mut finished: Vec<(JobId, DateTime<Utc>)> = Vec::new();
        // The batch's tenants (mostly one), each looked up once.
        let mut tenants: Vec<(CompactString, Arc<Tenant>)> = Vec::new();
        let results = changes
            .into_iter()
            .map(|(id, change)| {
                let mut shard = self.shard(&id).lock();
                let job = shard.get_mut(&id).ok_or(StoreError::NotFound(id))?;
                let before = job.status;
                // Copies only while a reader still holds the previous version.
                change.apply(Arc::make_mut(job))?;
                let slot = match tenants.iter().rposition(|(name, _)| *name == job.tenant_id) {
                    Some(slot) => Some(slot),
                    None => self.tenant(&job.tenant_id).map(|tenant| {
                        tenants.push((job.tenant_id.clone(), tenant));
                        tenants.len() - 1
                    }),
                };
                if let Some(slot) = slot {
                    tenants[slot].1.moves.lock().push(Move {
                        id,
                        before,
                        status: job.status,
                        dead_letter: job.dead_letter,
                    });
                }
                if let Some(at) = job.finished_at
                    && !before.is_terminal()
                    && !job.dead_letter
                {
                    finished.push((id, at));
                }
                Ok(Arc::clone(job))
            })
            .collect();
        for (_, tenant) in &tenants {
            tenant.try_enter_moves();
        }
        if !finished.is_empty() {
            self.retire(finished);
        }
        results
    }

    /// Enters newly finished jobs and, past the bound by an eighth, drops
    /// the oldest: in batches, since taking one id out of a tenant's
    /// ordered index moves the ids after it.
    fn retire(&self, newly: Vec<(JobId, DateTime<Utc>)>) {
        let oldest: Vec<(JobId, DateTime<Utc>)> = {
            let mut finished = self.finished.lock();
            finished.extend(newly);
            if finished.len() <= self.keep_finished + self.keep_finished / 8 {
                return;
            }
            let over = finished.len() - self.keep_finished;
            finished.drain(..over).collect()
        };
        // Out of the shards first: a listing that still finds an id in an
        // index skips it.
        let gone = oldest.into_iter().filter_map(|(id, at)| {
            let mut shard = self.shard(&id).lock();
            let job = shard.get(&id)?;
            // Revived since: still a dead letter, or running again.
            let current = job.finished_at == Some(at) && !job.dead_letter;
            current.then(|| shard.remove(&id)).flatten()
        });
        // By tenant through a hash map, not a sort by name: a sort compared
        // the jobs' tenant and namespace names some 13 times a job, which
        // was about 5 % of a `tool_call` job's instructions. Each tenant's
        // jobs stay in the order they finished, which is nearly the order
        // of their ids (see `Leaving::new`).
        let mut by_tenant: NameMap<CompactString, Vec<Arc<Job>>> = NameMap::default();
        for job in gone {
            by_tenant
                .entry(job.tenant_id.clone())
                .or_default()
                .push(job);
        }
        for (tenant, mut jobs) in by_tenant {
            if let Some(index) = self.tenant(&tenant) {
                let leaving = Leaving::new(&jobs);
                index.lock().forget(&leaving);
            }
            // Freed in the order of their addresses: the oldest finished
            // jobs (100,000 finishes old by default) are cold, and in that
            // order the allocator frees page after page and the hardware
            // prefetcher sees where the next one is. In the order they
            // finished, retiring took 0.49–0.78 µs a job in `cargo bench
            // --bench scheduler`; in this one 0.36–0.61 (two alternating
            // pairs of runs).
            jobs.sort_unstable_by_key(|job| Arc::as_ptr(job).addr());
        }
    }

    fn read(&self, id: &JobId) -> Option<Arc<Job>> {
        self.shard(id).lock().get(id).cloned()
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn insert(
        &self,
        jobs: Vec<Arc<Job>>,
        _commit: Commit,
    ) -> Result<Vec<Inserted>, StoreError> {
        // Lock every tenant involved, in name order, so two batches cannot
        // deadlock and idempotency checks and inserts happen as one step.
        let (indexes, slots) = {
            let mut names: Vec<&str> = jobs.iter().map(|job| job.tenant_id.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let slots: Vec<usize> = jobs
                .iter()
                .map(|job| names.binary_search(&job.tenant_id.as_str()).unwrap_or(0))
                .collect();
            let indexes: Vec<_> = names.iter().map(|name| self.tenant_or_new(name)).collect();
            (indexes, slots)
        };
        let mut guards: Vec<_> = indexes.iter().map(|index| index.lock()).collect();

        for job in &jobs {
            if self.shard(&job.id).lock().contains_key(&job.id) {
                return Err(StoreError::Duplicate(job.id));
            }
        }
        let mut outcome = Vec::with_capacity(jobs.len());
        let mut first_with_key: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let Some(key) = job.constraints.idempotency_key.as_deref() else {
                outcome.push(Inserted::New);
                continue;
            };
            let stored = guards[slots[i]]
                .idempotency
                .get(key)
                .and_then(|id| self.read(id));
            let existing = stored.or_else(|| {
                first_with_key
                    .get(&(job.tenant_id.as_str(), key))
                    .map(|&first| Arc::clone(&jobs[first]))
            });
            match existing {
                Some(existing) => outcome.push(Inserted::Existing(existing)),
                None => {
                    first_with_key.insert((job.tenant_id.as_str(), key), i);
                    outcome.push(Inserted::New);
                }
            }
        }
        drop(first_with_key);
        for ((job, inserted), slot) in jobs.into_iter().zip(&outcome).zip(slots) {
            if matches!(inserted, Inserted::New) {
                guards[slot].add(&job);
                self.shard(&job.id).lock().insert(job.id, job);
            }
        }
        drop(guards);
        Ok(outcome)
    }

    async fn get(&self, id: JobId) -> Result<Option<Arc<Job>>, StoreError> {
        Ok(self.read(&id))
    }

    async fn get_by_external_id(
        &self,
        tenant: &str,
        external_id: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        Ok(self.read_by(tenant, |index| index.external.get(external_id).copied()))
    }

    async fn get_by_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Arc<Job>>, StoreError> {
        Ok(self.read_by(tenant, |index| index.idempotency.get(key).copied()))
    }

    async fn list(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let cursor = query.cursor_id()?.map(|id| key(&id));
        let limit = query.page_size();
        let empty = JobPage {
            jobs: Vec::new(),
            next_cursor: None,
        };
        let Some(index) = self.tenant(&query.tenant_id) else {
            return Ok(empty);
        };
        let index = index.lock();
        // Walk the narrowest index that applies; check the other filters
        // on each job.
        let ids: Box<dyn Iterator<Item = JobId>> = if query.dead_letter {
            Box::new(below(&index.dead_letters, cursor))
        } else if let Some(status) = query.status {
            index.by_status.below(status, cursor)
        } else if let Some(namespace) = &query.namespace {
            match index.by_namespace.get(namespace.as_str()) {
                Some(ids) => Box::new(ids.below(cursor)),
                None => return Ok(empty),
            }
        } else {
            Box::new(index.all.below(cursor))
        };
        let mut jobs = Vec::new();
        let mut next_cursor = None;
        for id in ids {
            let Some(job) = self.read(&id) else { continue };
            if !query.matches(&job) {
                continue;
            }
            if jobs.len() == limit {
                next_cursor = jobs.last().map(|last: &Arc<Job>| last.id.to_string());
                break;
            }
            jobs.push(job);
        }
        Ok(JobPage { jobs, next_cursor })
    }

    async fn transition(&self, id: JobId, change: Transition) -> Result<Arc<Job>, StoreError> {
        let mut results = self.apply_all(vec![(id, change)]);
        results.pop().unwrap_or(Err(StoreError::NotFound(id)))
    }

    async fn transition_batch(
        &self,
        changes: Vec<(JobId, Transition)>,
        _commit: Commit,
    ) -> Vec<Result<Arc<Job>, StoreError>> {
        self.apply_all(changes)
    }

    async fn unfinished(&self) -> Result<Vec<Arc<Job>>, StoreError> {
        Ok(self
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .values()
                    .filter(|job| !job.status.is_terminal())
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobQuery;
    use work_host_api::OutcomeClass;

    /// A queued job of `tenant`, as a store reads one back.
    fn job(tenant: &str) -> Arc<Job> {
        let job = serde_json::json!({
            "id": uuid::Uuid::now_v7(),
            "kind": "sim",
            "tenant_id": tenant,
            "namespace": "ns",
            "priority": "batch",
            "payload": {},
            "resources": {},
            "constraints": {},
            "status": "queued",
            "attempt": 0,
            "created_at": Utc::now(),
        });
        Arc::new(serde_json::from_value(job).unwrap())
    }

    /// Claims and a finish made while a submission holds the tenant's
    /// index wait in its list of changes, and are in the index, in the
    /// order made, as soon as anyone reads it.
    #[tokio::test]
    async fn changes_made_while_the_index_is_held_are_listed_once_it_is_free() {
        let store = MemoryStore::new();
        let jobs: Vec<Arc<Job>> = (0..3).map(|_| job("t")).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        store.insert(jobs, Commit::Durable).await.unwrap();
        let tenant = store.tenant("t").unwrap();
        let held = tenant.index.lock();
        for id in &ids {
            let claim = Transition::Claim {
                backend: "mock".into(),
                at: Utc::now(),
            };
            let [claimed] = <[_; 1]>::try_from(store.apply_all(vec![(*id, claim)])).unwrap();
            claimed.unwrap();
        }
        let finish = Transition::Finish {
            epoch: 1,
            status: JobStatus::Succeeded,
            outcome: OutcomeClass::Ok,
            result: None,
            error: None,
            dead_letter: false,
            at: Utc::now(),
            cost_usd: 0.0,
        };
        let [finished] = <[_; 1]>::try_from(store.apply_all(vec![(ids[0], finish)])).unwrap();
        finished.unwrap();
        assert_eq!(
            tenant.moves.lock().len(),
            4,
            "entered while the index was held"
        );
        drop(held);
        let listed = |status| {
            let store = &store;
            async move {
                let page = store
                    .list(&JobQuery::tenant("t").status(status))
                    .await
                    .unwrap();
                page.jobs.iter().map(|job| job.id).collect::<Vec<_>>()
            }
        };
        assert_eq!(listed(JobStatus::Running).await, [ids[2], ids[1]]);
        assert_eq!(listed(JobStatus::Succeeded).await, [ids[0]]);
        assert!(listed(JobStatus::Queued).await.is_empty());
        assert!(tenant.moves.lock().is_empty());
    }

    /// Arrivals mostly in order, some out of order, some again after
    /// leaving; departures from anywhere: the set lists what a B-tree set
    /// would, through every sweep.
    #[test]
    fn an_active_set_lists_what_a_btree_set_would() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut active, mut model) = (Active::default(), BTreeSet::new());
        let mut next: Key = 1_000;
        for step in 0..20_000 {
            match rng.u8(..10) {
                0..=4 => {
                    next += rng.u128(1..4);
                    let id = if rng.u8(..8) == 0 {
                        next - rng.u128(0..500)
                    } else {
                        next
                    };
                    active.insert(id);
                    model.insert(id);
                }
                _ => {
                    let id = next - rng.u128(0..600);
                    active.remove(id);
                    model.remove(&id);
                }
            }
            assert_eq!(active.live, model.len());
            if step % 997 == 0 {
                let cursor = next - rng.u128(0..300);
                let listed: Vec<JobId> = active.below(Some(cursor)).collect();
                let expected: Vec<JobId> = below(&model, Some(cursor)).collect();
                assert_eq!(listed, expected);
                assert!(active.below(None).eq(below(&model, None)));
            }
        }
        assert!(active.ids.len() <= 2 * active.live + 32);
    }

    /// Removing sorted ids, some absent, some at the front, some in the
    /// middle and at the end, leaves what removing them one by one would.
    #[test]
    fn an_ascending_set_removes_exactly_the_ids_gone() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..200 {
            let mut set = Ascending::default();
            let mut model = BTreeSet::new();
            let mut id: Key = 0;
            for _ in 0..rng.usize(0..300) {
                id += rng.u128(1..4);
                set.insert(JobId::from_u128(id));
                model.insert(id);
            }
            let mut gone: Vec<Key> = (0..rng.usize(0..120))
                .map(|_| rng.u128(0..=id + 2))
                .collect();
            gone.sort_unstable();
            gone.dedup();
            set.remove_sorted(&gone);
            for g in &gone {
                model.remove(g);
            }
            assert!(set.below(None).eq(below(&model, None)));
        }
    }

    /// A burst of ids that have all left gives its memory back.
    #[test]
    fn an_active_set_shrinks_once_a_burst_has_left() {
        let mut active = Active::default();
        for id in 0..100_000 {
            active.insert(id);
        }
        for id in 0..99_990 {
            active.remove(id);
        }
        let left: Vec<JobId> = (99_990..100_000_u128).rev().map(JobId::from_u128).collect();
        assert!(active.below(None).eq(left));
        assert!(active.ids.capacity() < 1_000, "{}", active.ids.capacity());
    }
}
