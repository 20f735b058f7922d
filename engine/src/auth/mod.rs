//! Who may do what (SPEC §10): API keys with a tenant and a role, the
//! tenants' limits, and the audit trail, kept in `DATA_DIR/auth.db`.
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
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

pub use audit::{AuditEntry, AuditPage, AuditQuery, acting_as};
pub use keys::{CreatedKey, KeyInfo, NewKey};
pub use tenants::TenantLimits;

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
/// Every read goes to the file, so a key revoked by another process on the
/// same directory (`work-engine keys revoke`) is refused on its next use.
/// Audit entries are written by a thread of their own, in batches.
pub struct AuthStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    secret: [u8; 32],
    audit: mpsc::Sender<audit::Op>,
    writer: Option<JoinHandle<()>>,
    last_used: Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

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
    last_used_at TEXT,
    rate_per_second REAL
);
CREATE TABLE IF NOT EXISTS tenants (
    tenant TEXT PRIMARY KEY,
    limits TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    tenant TEXT,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit(target, seq);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit(tenant, seq);
";

impl AuthStore {
    /// Opens (creating when needed) `data_dir/auth.db` and the server
    /// secret `data_dir/auth.secret`.
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
        let conn = connect(&path)?;
        conn.execute_batch(SCHEMA)?;
        let (audit, ops) = mpsc::channel();
        let writer_conn = connect(&path)?;
        let writer = std::thread::Builder::new()
            .name("work-engine-audit".into())
            .spawn(move || audit::write(&writer_conn, &ops))?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
            secret,
            audit,
            writer: Some(writer),
            last_used: Mutex::default(),
        })
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AuthStore {
    fn drop(&mut self) {
        let _ = self.audit.send(audit::Op::Stop);
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
