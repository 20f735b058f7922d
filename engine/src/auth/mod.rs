//! Who may do what (SPEC §10): API keys with a tenant and a role and the
//! tenants' limits, kept in `DATA_DIR/auth.db`, and the audit trail, in
//! `DATA_DIR/audit.db`.
//!
//! A key is `wk_live_<id>_<secret>`: a 16-hex-digit public id, by which
//! it is listed and revoked, and 256 random bits. The store keeps only an
//! HMAC-SHA-256 of the whole key under a server secret (`DATA_DIR/
//! auth.secret`, created once, mode 0600): a copy of `auth.db` alone
//! cannot be used to find or check a key. The key is shown once, when it
//! is created.
//!
//! ```no_run
//! # fn demo() -> Result<(), work_engine::auth::AuthError> {
//! use work_engine::auth::{AuthStore, NewKey, Role};
//!
//! let auth = AuthStore::open(".work-engine")?;
//! let created = auth.create_key(NewKey::tenant("acme", Role::Submitter))?;
//! println!("{}", created.key); // shown this once
//! let caller = auth.authenticate(&created.key)?;
//! assert_eq!(caller.tenant.as_deref(), Some("acme"));
//! # Ok(()) }
//! ```

mod audit;
mod keys;
mod tenants;

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::group_queue::GroupQueue;

pub use audit::{AuditEntry, AuditPage, AuditQuery, acting_as};
pub use keys::{CLI_ACTOR, CreatedKey, KeyInfo, NewKey};
pub use tenants::{TenantLimits, TenantQuota};

/// What a key may do. Each role includes nothing of the others except
/// that an admin may also do what a submitter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum Role {
    /// Manages its tenant's keys, tools and quotas (the operator's key:
    /// every tenant's, and the shared tools); submits like a submitter.
    Admin,
    /// Submits, reads and cancels its tenant's jobs; calls tools.
    Submitter,
    /// Claims and reports its tenant's work (remote workers).
    Worker,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Submitter => "submitter",
            Self::Worker => "worker",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "submitter" => Some(Self::Submitter),
            "worker" => Some(Self::Worker),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a valid key says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The key's public id (what the audit trail names).
    pub key_id: String,
    /// Its tenant; `None` for the operator's key, which acts for all.
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// Its own limit on submissions per second, if any.
    pub rate_per_second: Option<f64>,
    /// For a worker key, what it may claim work for (empty: anything).
    pub capabilities: Vec<String>,
}

impl Identity {
    /// Whether this is the operator's key.
    pub fn is_operator(&self) -> bool {
        self.tenant.is_none()
    }
}

/// Why a key was refused, or the auth store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Not of the form `wk_live_<id>_<secret>`.
    #[error("malformed API key: expected wk_live_<id>_<secret>")]
    Malformed,
    /// No such key, or the secret does not match.
    #[error("unknown API key")]
    Unknown,
    /// Revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// Past its expiry.
    #[error("the API key has expired")]
    Expired,
    /// No key of that id (for the caller).
    #[error("no key `{0}`")]
    NotFound(String),
    /// A request that cannot be honoured (a bad tenant name, a past expiry).
    #[error("{0}")]
    Invalid(String),
    /// The store's file.
    #[error("auth store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The secret's file.
    #[error("auth secret: {0}")]
    Io(#[from] std::io::Error),
}

/// Keys, tenants' limits and the audit trail of one data directory.
///
/// A key checked once is kept in memory: a request with it reads no file.
/// A key revoked through this store is dropped from memory at once, so its
/// next request is refused. A change by another process on the same
/// directory (`work-engine keys revoke`) is noticed within
/// [`CHANGES_SEEN_WITHIN`]: at most that often, a request asks SQLite
/// whether `auth.db` changed (`PRAGMA data_version`), and if it did, every
/// key is checked again. Audit entries are written by a thread of their
/// own, in batches, to a file of their own, so that their commits do not
/// look like changes to the keys.
pub struct AuthStore {
    /// `auth.db`, for `Debug`.
    path: PathBuf,
    /// A few connections, so that concurrent requests do not queue on one.
    conns: Vec<Mutex<Conn>>,
    secret: [u8; 32],
    checked: parking_lot::RwLock<std::collections::HashMap<String, std::sync::Arc<keys::Checked>>>,
    /// Grows each time `checked` loses entries: a check that began before
    /// is not kept, since it may have read the key before the change.
    generation: std::sync::atomic::AtomicU64,
    audit_reader: Mutex<Connection>,
    audit: std::sync::Arc<GroupQueue<audit::Op>>,
    writer: Option<JoinHandle<()>>,
    /// When this store was opened: the epoch of `looked`.
    opened: std::time::Instant,
    /// When a request last asked whether `auth.db` changed, in
    /// milliseconds since `opened`.
    looked: std::sync::atomic::AtomicU64,
}

/// How soon a key revoked by another process on the same data directory
/// is refused (one revoked through the store, or its server's API: at
/// once).
pub const CHANGES_SEEN_WITHIN: std::time::Duration = std::time::Duration::from_millis(100);

/// A connection to `auth.db`, and the `data_version` it last saw.
struct Conn {
    sqlite: Connection,
    version: i64,
}

impl std::ops::Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.sqlite
    }
}

/// How many connections to `auth.db`.
const CONNECTIONS: usize = 4;

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    tenant TEXT,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT,
    expires_at TEXT,
    revoked_at TEXT,
    rate_per_second REAL,
    -- A worker key's capabilities, comma-separated; empty for any.
    capabilities TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    limits TEXT NOT NULL
);
";

const AUDIT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    tenant TEXT,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit(target, seq);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit(tenant, seq);
-- When each key was last used (to the minute): kept here, not in
-- auth.db, so that its writes do not look like changes to the keys.
CREATE TABLE IF NOT EXISTS key_use (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
";

impl AuthStore {
    /// Opens (creating when needed) `data_dir/auth.db`, `data_dir/audit.db`
    /// and the server secret `data_dir/auth.secret`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Io`] or [`AuthError::Sqlite`] when either cannot be
    /// created or read.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, AuthError> {
        let data_dir = data_dir.as_ref();
        std::fs::create_dir_all(data_dir)?;
        let secret = keys::server_secret(&data_dir.join("auth.secret"))?;
        let path = data_dir.join("auth.db");
        let audit_path = data_dir.join("audit.db");
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let sqlite = connect(&path)?;
            if conns.is_empty() {
                sqlite.execute_batch(SCHEMA)?;
            }
            let version = data_version(&sqlite)?;
            conns.push(Mutex::new(Conn { sqlite, version }));
        }
        let audit_reader = connect(&audit_path)?;
        audit_reader.execute_batch(AUDIT_SCHEMA)?;
        let audit = std::sync::Arc::new(GroupQueue::new(audit::LINGER, audit::MAX_GROUP));
        let writer_conn = connect(&audit_path)?;
        let ops = std::sync::Arc::clone(&audit);
        let writer = std::thread::Builder::new()
            .name("work-engine-audit".into())
            .spawn(move || audit::write(&writer_conn, &ops))?;
        Ok(Self {
            path,
            conns,
            secret,
            checked: parking_lot::RwLock::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            audit_reader: Mutex::new(audit_reader),
            audit,
            writer: Some(writer),
            opened: std::time::Instant::now(),
            looked: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Asks whether `auth.db` changed, if nobody did in the last
    /// [`CHANGES_SEEN_WITHIN`].
    fn look_for_changes(&self) -> Result<(), AuthError> {
        use std::sync::atomic::Ordering;
        let now = self.millis();
        let looked = self.looked.load(Ordering::Relaxed);
        let due = now.saturating_sub(looked) >= CHANGES_SEEN_WITHIN.as_millis() as u64;
        if due
            && self
                .looked
                .compare_exchange(looked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            drop(self.conn()?);
        }
        Ok(())
    }

    /// Milliseconds since this store was opened.
    fn millis(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// A connection to `auth.db`: a free one, else the first. Forgets the
    /// keys checked so far when the file changed since this connection
    /// last looked (another connection or process committed).
    fn conn(&self) -> Result<parking_lot::MutexGuard<'_, Conn>, AuthError> {
        let mut conn = self
            .conns
            .iter()
            .find_map(Mutex::try_lock)
            .unwrap_or_else(|| self.conns[0].lock());
        let version = data_version(&conn)?;
        if version != conn.version {
            conn.version = version;
            self.forget(None);
        }
        Ok(conn)
    }

    /// Forgets the checked key `id`, or every one.
    fn forget(&self, id: Option<&str>) {
        let mut checked = self.checked.write();
        match id {
            Some(id) => {
                checked.remove(id);
            }
            None => checked.clear(),
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Changes when another connection commits to the file.
fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))
}

impl Drop for AuthStore {
    fn drop(&mut self) {
        self.audit.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn connect(path: &Path) -> Result<Connection, AuthError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
