//! API keys: made, hashed, checked, listed and revoked.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::Sha256;

use super::{AuthError, AuthStore, Identity, Role, audit, now_text};

/// The audit trail's actor for a command on the data directory.
pub const CLI_ACTOR: &str = "cli";

/// What every key starts with: a scanner can find leaked keys by it.
pub const KEY_PREFIX: &str = "wk_live_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// How often a key's `last_used_at` is written, at most: the time of use
/// is kept to this precision, and a busy key costs no write per request.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// A key to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    /// Its tenant; `None` makes an operator's key (admin of every tenant).
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key id that created it (`None`: the command line; the audit
    /// trail names `cli`).
    pub created_by: Option<String>,
    /// Its own limit on submissions per second.
    pub rate_per_second: Option<f64>,
    /// For a worker key: the capabilities (job kinds, backends) it may
    /// claim work for; empty for any.
    pub capabilities: Vec<String>,
}

impl NewKey {
    /// A key of `tenant` with `role`, not expiring, unlimited.
    pub fn tenant(tenant: impl Into<String>, role: Role) -> Self {
        Self {
            tenant: Some(tenant.into()),
            role,
            expires_at: None,
            created_by: None,
            rate_per_second: None,
            capabilities: Vec::new(),
        }
    }

    /// This key, expiring `ttl` from now.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] when that is past the last time there is.
    pub fn expiring_in(mut self, ttl: Duration) -> Result<Self, AuthError> {
        let expires_at = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|ttl| Utc::now().checked_add_signed(ttl))
            .ok_or_else(|| AuthError::Invalid(format!("an expiry {ttl:?} away is too far")))?;
        self.expires_at = Some(expires_at);
        Ok(self)
    }

    /// The operator's key: an admin of every tenant.
    pub fn operator() -> Self {
        Self {
            tenant: None,
            role: Role::Admin,
            expires_at: None,
            created_by: None,
            rate_per_second: None,
            capabilities: Vec::new(),
        }
    }
}

/// A key as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    /// Its public id.
    pub id: String,
    /// How the key starts (`wk_live_<id>`), to recognise it.
    pub prefix: String,
    /// Its tenant; absent for the operator's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// What it may do.
    pub role: Role,
    /// Whether it is the operator's key.
    pub operator: bool,
    /// When it was made.
    pub created_at: String,
    /// The key that made it; absent when made on the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When it stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// When it was last used, to the minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// Its own limit on submissions per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// What a worker key may claim work for; absent: anything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// A key just made: the only time its secret exists outside the caller.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    /// The key's public id.
    pub id: String,
    /// The key itself, for `Authorization: Bearer …`. Shown once.
    pub key: String,
    /// The key as listed.
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// `DATA_DIR/auth.secret`: read, or made once (mode 0600).
pub(super) fn server_secret(path: &Path) -> Result<[u8; 32], AuthError> {
    if let Ok(bytes) = std::fs::read(path) {
        return bytes.try_into().map_err(|_| {
            AuthError::Invalid(format!("{} is not a 32-byte secret", path.display()))
        });
    }
    let mut secret = [0; 32];
    random(&mut secret)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(&secret)?;
            file.sync_all()?;
            Ok(secret)
        }
        // Another process made it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => server_secret(path),
        Err(err) => Err(err.into()),
    }
}

fn random(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf).map_err(|err| AuthError::Io(std::io::Error::other(err.to_string())))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The key's id, if `key` has the shape of one.
fn parse(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_of = |text: &str, bytes: usize| {
        text.len() == bytes * 2 && text.bytes().all(|b| b.is_ascii_hexdigit())
    };
    (hex_of(id, ID_BYTES) && hex_of(secret, SECRET_BYTES)).then_some(id)
}

/// A tenant's name, as the engine takes it: 1 to 128 printable
/// characters.
pub(crate) fn check_tenant(tenant: &str) -> Result<(), AuthError> {
    if tenant.is_empty() || tenant.len() > 128 || tenant.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "a tenant is 1 to 128 printable characters".into(),
        ));
    }
    Ok(())
}

impl AuthStore {
    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    fn hash(&self, key: &str) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Makes a key, and records it in the audit trail. Its secret is in
    /// the answer and nowhere else.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] for a bad tenant name, an expiry in the past
    /// or a rate that is not a positive number; [`AuthError::Sqlite`].
    pub fn create_key(&self, new: NewKey) -> Result<CreatedKey, AuthError> {
        if let Some(tenant) = &new.tenant {
            check_tenant(tenant)?;
        }
        if new.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AuthError::Invalid("the expiry is in the past".into()));
        }
        if new
            .rate_per_second
            .is_some_and(|rate| !rate.is_finite() || rate <= 0.0)
        {
            return Err(AuthError::Invalid(
                "rate_per_second must be a number above 0".into(),
            ));
        }
        if new.capabilities.iter().any(|c| {
            c.is_empty() || c.len() > 128 || c.contains(',') || c.chars().any(char::is_control)
        }) {
            return Err(AuthError::Invalid(
                "a capability is 1 to 128 printable characters, without commas".into(),
            ));
        }
        let mut id = [0; ID_BYTES];
        let mut secret = [0; SECRET_BYTES];
        random(&mut id)?;
        random(&mut secret)?;
        let id = hex(&id);
        let key = format!("{KEY_PREFIX}{id}_{}", hex(&secret));
        let operator = new.tenant.is_none();
        let info = KeyInfo {
            prefix: format!("{KEY_PREFIX}{id}"),
            id: id.clone(),
            tenant: new.tenant,
            role: new.role,
            operator,
            created_at: now_text(),
            created_by: new.created_by,
            expires_at: new
                .expires_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            revoked_at: None,
            last_used_at: None,
            rate_per_second: new.rate_per_second,
            capabilities: new.capabilities,
        };
        self.conn()?.execute(
            "INSERT INTO keys (id, hash, tenant, role, created_at, created_by, expires_at, \
             rate_per_second, capabilities) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                info.id,
                self.hash(&key),
                info.tenant,
                info.role.as_str(),
                info.created_at,
                info.created_by,
                info.expires_at,
                info.rate_per_second,
                info.capabilities.join(","),
            ],
        )?;
        self.record(
            info.created_by.as_deref().unwrap_or(CLI_ACTOR),
            info.tenant.as_deref(),
            "key.created",
            Some(&id),
            serde_json::json!({ "role": info.role, "operator": info.operator }),
        );
        Ok(CreatedKey { id, key, info })
    }

    /// Whether any key exists (a first start makes the operator's).
    ///
    /// # Errors
    ///
    /// [`AuthError::Sqlite`].
    pub fn has_keys(&self) -> Result<bool, AuthError> {
        Ok(self
            .conn()?
            .query_row("SELECT EXISTS (SELECT 1 FROM keys)", [], |row| row.get(0))?)
    }

    /// Keys of `tenant`, or every key for `None`, oldest first.
    ///
    /// # Errors
    ///
    /// [`AuthError::Sqlite`].
    pub fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>, AuthError> {
        let conn = self.conn()?;
        let mut statement = conn.prepare_cached(
            "SELECT id, tenant, role, created_at, created_by, expires_at, revoked_at, \
             rate_per_second, capabilities FROM keys \
             WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at, id",
        )?;
        let rows = statement.query_map([tenant], key_info)?;
        let mut keys: Vec<KeyInfo> = rows.collect::<Result<_, _>>()?;
        drop(statement);
        drop(conn);
        self.fill_last_use(&mut keys)?;
        Ok(keys)
    }

    /// Fills in when each key was last used (kept in `audit.db`).
    fn fill_last_use(&self, keys: &mut [KeyInfo]) -> Result<(), AuthError> {
        let conn = self.audit_reader.lock();
        let mut statement = conn.prepare_cached("SELECT at FROM key_use WHERE id = ?1")?;
        for key in keys {
            key.last_used_at = statement
                .query_row([&key.id], |row| row.get(0))
                .optional()?;
        }
        Ok(())
    }

    /// The key `id`, if it exists and is `tenant`'s (any key for `None`).
    ///
    /// # Errors
    ///
    /// [`AuthError::Sqlite`].
    pub fn key(&self, id: &str, tenant: Option<&str>) -> Result<Option<KeyInfo>, AuthError> {
        let conn = self.conn()?;
        let mut statement = conn.prepare_cached(
            "SELECT id, tenant, role, created_at, created_by, expires_at, revoked_at, \
             rate_per_second, capabilities FROM keys \
             WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )?;
        let mut key = statement
            .query_row(params![id, tenant], key_info)
            .optional()?;
        drop(statement);
        drop(conn);
        self.fill_last_use(key.as_mut_slice())?;
        Ok(key)
    }

    /// Revokes the key `id` of `tenant` (any key for `None`): its next use
    /// is refused. Records that `actor` did. Revoking a revoked key
    /// changes nothing.
    ///
    /// # Errors
    ///
    /// [`AuthError::NotFound`] when there is no such key for `tenant`.
    pub fn revoke_key(
        &self,
        id: &str,
        tenant: Option<&str>,
        actor: &str,
    ) -> Result<KeyInfo, AuthError> {
        self.conn()?.execute(
            "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL \
             AND (?3 IS NULL OR tenant = ?3)",
            params![id, now_text(), tenant],
        )?;
        self.forget(Some(id));
        let revoked = self
            .key(id, tenant)?
            .ok_or_else(|| AuthError::NotFound(id.to_owned()))?;
        let tenant = revoked.tenant.as_deref();
        self.record(
            actor,
            tenant,
            "key.revoked",
            Some(id),
            serde_json::Value::Null,
        );
        Ok(revoked)
    }

    /// Who `key` belongs to, if it is valid now.
    ///
    /// # Errors
    ///
    /// [`AuthError::Malformed`], [`AuthError::Unknown`] (no such key, or a
    /// wrong secret: the two are not told apart), [`AuthError::Revoked`],
    /// [`AuthError::Expired`], [`AuthError::Sqlite`].
    pub fn authenticate(&self, key: &str) -> Result<Arc<Identity>, AuthError> {
        let id = parse(key).ok_or(AuthError::Malformed)?;
        self.look_for_changes()?;
        let cached = self.checked.read().get(id).cloned();
        let checked = match cached {
            Some(checked) if same(checked.key.as_bytes(), key.as_bytes()) => checked,
            _ => {
                let generation = self.generation.load(Ordering::Relaxed);
                let checked = Arc::new(self.check(id, key)?);
                let mut all = self.checked.write();
                // Kept only if nothing was forgotten since the check began:
                // it may have read the key before a revocation.
                if self.generation.load(Ordering::Relaxed) == generation {
                    all.insert(id.to_owned(), Arc::clone(&checked));
                }
                checked
            }
        };
        if checked.revoked {
            return Err(AuthError::Revoked);
        }
        if checked.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AuthError::Expired);
        }
        self.note_use(&checked);
        Ok(Arc::clone(&checked.identity))
    }

    /// Reads the key `id` and checks `key` against its hash.
    fn check(&self, id: &str, key: &str) -> Result<Checked, AuthError> {
        let row = {
            let conn = self.conn()?;
            let mut statement = conn.prepare_cached(
                "SELECT hash, tenant, role, expires_at, revoked_at, rate_per_second, \
                 capabilities FROM keys WHERE id = ?1",
            )?;
            statement
                .query_row([id], |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<f64>>(5)?,
                        row.get::<_, String>(6)?,
                    ))
                })
                .optional()?
        };
        let Some((hash, tenant, role, expires_at, revoked_at, rate_per_second, capabilities)) = row
        else {
            return Err(AuthError::Unknown);
        };
        // Constant time: the comparison leaks nothing of the stored hash.
        let mut mac = self.mac();
        mac.update(key.as_bytes());
        mac.verify_slice(&hash).map_err(|_| AuthError::Unknown)?;
        let role = Role::parse(&role).ok_or(AuthError::Unknown)?;
        Ok(Checked {
            key: key.to_owned(),
            identity: Arc::new(Identity {
                key_id: id.to_owned(),
                tenant,
                role,
                rate_per_second,
                capabilities: split_list(&capabilities),
            }),
            expires_at: expires_at
                .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
                .map(|at| at.with_timezone(&Utc)),
            revoked: revoked_at.is_some(),
            noted: AtomicU64::new(u64::MAX),
        })
    }

    /// Records the key's use, at most once a minute per key.
    fn note_use(&self, checked: &Checked) {
        let now = self.millis();
        let noted = checked.noted.load(Ordering::Relaxed);
        let due =
            noted == u64::MAX || now.saturating_sub(noted) >= LAST_USED_EVERY.as_millis() as u64;
        if due
            && checked
                .noted
                .compare_exchange(noted, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let id = checked.identity.key_id.clone();
            self.audit.push(audit::Op::Used(id, now_text()), false);
        }
    }
}

/// A key whose secret matched its hash, as the file had it then.
pub(super) struct Checked {
    /// The key as presented: the next presentation is compared with it.
    key: String,
    identity: Arc<Identity>,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    /// When its use was last written, in the store's milliseconds
    /// (`u64::MAX`: not yet).
    noted: AtomicU64,
}

/// `a == b` in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn key_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    let id: String = row.get(0)?;
    let tenant: Option<String> = row.get(1)?;
    let role: String = row.get(2)?;
    Ok(KeyInfo {
        prefix: format!("{KEY_PREFIX}{id}"),
        id,
        operator: tenant.is_none(),
        tenant,
        role: Role::parse(&role).unwrap_or(Role::Worker),
        created_at: row.get(3)?,
        created_by: row.get(4)?,
        expires_at: row.get(5)?,
        revoked_at: row.get(6)?,
        last_used_at: None,
        rate_per_second: row.get(7)?,
        capabilities: split_list(&row.get::<_, String>(8)?),
    })
}

/// `a,b` as `["a", "b"]`; `""` as none.
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_parse() {
        let id = "0123456789abcdef";
        let secret = "ab".repeat(SECRET_BYTES);
        assert_eq!(parse(&format!("{KEY_PREFIX}{id}_{secret}")), Some(id));
        for bad in [
            String::new(),
            format!("{id}_{secret}"),
            format!("{KEY_PREFIX}{id}{secret}"),
            format!("{KEY_PREFIX}{id}_{}", &secret[1..]),
            format!("{KEY_PREFIX}{id}_{}zz", &secret[2..]),
            format!("{KEY_PREFIX}{}_{secret}", &id[1..]),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
