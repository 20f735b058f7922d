//! What a tool may reach beyond its own memory.
//!
//! A guest starts with nothing: no files, no environment, no sockets. Each
//! grant is given at registration, stored with the tool, and applied to
//! every call's WASI context.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The capabilities a tool was granted at registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Grants {
    /// Host directories preopened for the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// Names of environment variables the guest sees, with the value they
    /// have in the engine's process at call time (unset ones are left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// One preopened directory: `HOST[:GUEST][:rw]` on the command line.
///
/// The guest sees `host` at `guest` (the same path when not given), read
/// only unless `writable`. cap-std resolves every guest path inside the
/// directory, so `..` and symlinks cannot lead out of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DirGrant {
    /// Directory on the host; absolute after [`DirGrant::resolve`].
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub host: PathBuf,
    /// Where the guest sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the guest may create, write and delete files.
    #[serde(default)]
    pub writable: bool,
}

/// Why a grant is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// The `HOST[:GUEST][:rw]` text could not be parsed.
    #[error("invalid directory grant `{spec}`: {reason}")]
    InvalidDir {
        /// The text as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host directory does not exist or is not a directory.
    #[error("cannot grant {path}: {reason}")]
    MissingDir {
        /// The host path.
        path: PathBuf,
        /// The I/O error or "not a directory".
        reason: String,
    },
    /// An environment variable name that no process could have.
    #[error("invalid environment variable name `{0}`")]
    InvalidEnvName(String),
}

impl FromStr for DirGrant {
    type Err = GrantError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| GrantError::InvalidDir {
            spec: spec.to_owned(),
            reason,
        };
        let mut parts: Vec<&str> = spec.split(':').collect();
        let writable = match parts.last() {
            Some(&"rw") if parts.len() > 1 => {
                parts.pop();
                true
            }
            Some(&"ro") if parts.len() > 1 => {
                parts.pop();
                false
            }
            _ => false,
        };
        let (host, guest) = match parts.as_slice() {
            [host] => (*host, *host),
            [host, guest] => (*host, *guest),
            _ => return Err(invalid("expected HOST[:GUEST][:rw]")),
        };
        if host.is_empty() {
            return Err(invalid("the host directory is empty"));
        }
        if guest.is_empty() {
            return Err(invalid("the guest path is empty"));
        }
        Ok(Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            writable,
        })
    }
}

impl fmt::Display for DirGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.display(), self.guest)?;
        if self.writable {
            f.write_str(":rw")?;
        }
        Ok(())
    }
}

impl DirGrant {
    /// Makes the host path absolute and checks it is a directory, so a
    /// stored grant does not depend on the registering shell's directory.
    ///
    /// # Errors
    ///
    /// [`GrantError::MissingDir`] when the path is not an existing directory.
    pub fn resolve(mut self) -> Result<Self, GrantError> {
        let missing = |reason: String| GrantError::MissingDir {
            path: self.host.clone(),
            reason,
        };
        let host = self
            .host
            .canonicalize()
            .map_err(|err| missing(err.to_string()))?;
        if !host.is_dir() {
            return Err(missing("not a directory".to_owned()));
        }
        self.host = host;
        Ok(self)
    }
}

impl Grants {
    /// Resolves every directory and checks every variable name.
    ///
    /// # Errors
    ///
    /// The first unusable grant.
    pub fn resolve(self) -> Result<Self, GrantError> {
        for name in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(GrantError::InvalidEnvName(name.clone()));
            }
        }
        let dirs = self
            .dirs
            .into_iter()
            .map(DirGrant::resolve)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            dirs,
            env: self.env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_guest_and_mode() {
        let grant: DirGrant = "/srv/data:/data:rw".parse().unwrap();
        assert_eq!(grant.host, PathBuf::from("/srv/data"));
        assert_eq!(grant.guest, "/data");
        assert!(grant.writable);

        let grant: DirGrant = "/srv/data".parse().unwrap();
        assert_eq!(grant.guest, "/srv/data");
        assert!(!grant.writable);

        let grant: DirGrant = "/srv/data:ro".parse().unwrap();
        assert_eq!(grant.guest, "/srv/data");
        assert!(!grant.writable);
    }

    #[test]
    fn rejects_malformed_specs() {
        assert!("".parse::<DirGrant>().is_err());
        assert!("a:b:c:rw".parse::<DirGrant>().is_err());
        assert!("/x::rw".parse::<DirGrant>().is_err());
    }

    #[test]
    fn resolve_requires_an_existing_directory() {
        let grants = Grants {
            dirs: vec!["/definitely/not/here".parse().unwrap()],
            env: vec![],
        };
        assert!(matches!(
            grants.resolve(),
            Err(GrantError::MissingDir { .. })
        ));
        let bad_env = Grants {
            dirs: vec![],
            env: vec!["A=B".into()],
        };
        assert!(bad_env.resolve().is_err());
    }
}
