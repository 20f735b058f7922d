//! Tenants' weights and quotas, as admins set them, kept across restarts.
//!
//! Two hands set a tenant's quota: the operator sets its `limit`, and the
//! tenant's own admins may set `own`, a quota of their own choosing. The
//! scheduler enforces the tighter of the two, field by field, so a tenant
//! can hold itself back but never raise what the operator allows it.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{AuthError, AuthStore};
use crate::scheduler::{Quota, TenantConfig};

/// What is set for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TenantLimits {
    /// Its share within a level (the operator's to set; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The operator's quota for it.
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub limit: Quota,
    /// The quota its own admins chose.
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub own: Quota,
}

/// A tenant's limits as shown: what is set and what is enforced.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TenantQuota {
    /// The tenant.
    pub tenant: String,
    /// What is set.
    #[serde(flatten)]
    pub limits: TenantLimits,
    /// What the scheduler enforces: the weight and, field by field, the
    /// tighter of `limit` and `own`.
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub effective: TenantConfig,
}

impl TenantQuota {
    fn new(tenant: &str, limits: TenantLimits) -> Self {
        Self {
            tenant: tenant.to_owned(),
            effective: limits.effective(),
            limits,
        }
    }
}

impl TenantLimits {
    /// Sets the operator's quota, and the weight when one is given.
    pub fn set_limit(&mut self, quota: Quota, weight: Option<u32>) {
        self.limit = quota;
        if weight.is_some() {
            self.weight = weight;
        }
    }

    /// What the scheduler enforces: the weight, and the tighter of the two
    /// quotas.
    pub fn effective(&self) -> TenantConfig {
        TenantConfig {
            weight: self.weight.unwrap_or(1),
            quota: self.limit.tighter(&self.own),
        }
    }
}

impl AuthStore {
    /// What is set for `tenant` (nothing: the defaults).
    ///
    /// # Errors
    ///
    /// [`AuthError::Sqlite`].
    pub fn tenant_limits(&self, tenant: &str) -> Result<TenantLimits, AuthError> {
        let text: Option<String> = self
            .conn()?
            .query_row(
                "SELECT limits FROM tenants WHERE tenant = ?1",
                [tenant],
                |row| row.get(0),
            )
            .optional()?;
        Ok(text
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default())
    }

    /// `tenant`'s limits as shown.
    ///
    /// # Errors
    ///
    /// [`AuthError::Sqlite`].
    pub fn tenant_quota(&self, tenant: &str) -> Result<TenantQuota, AuthError> {
        Ok(TenantQuota::new(tenant, self.tenant_limits(tenant)?))
    }

    /// Every tenant with something set.
    ///
    /// # Errors
    ///
    /// [`AuthError::Sqlite`].
    pub fn all_tenant_limits(&self) -> Result<Vec<(String, TenantLimits)>, AuthError> {
        let conn = self.conn()?;
        let mut statement = conn.prepare("SELECT tenant, limits FROM tenants ORDER BY tenant")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut all = Vec::new();
        for row in rows {
            let (tenant, text) = row?;
            all.push((tenant, serde_json::from_str(&text).unwrap_or_default()));
        }
        Ok(all)
    }

    /// Keeps `limits` for `tenant`, and records that `actor` set them;
    /// answers them as shown.
    ///
    /// # Errors
    ///
    /// [`AuthError::Invalid`] for a bad tenant name or a quota that means
    /// nothing ([`Quota::check`]); [`AuthError::Sqlite`].
    pub fn set_tenant_limits(
        &self,
        tenant: &str,
        limits: TenantLimits,
        actor: &str,
    ) -> Result<TenantQuota, AuthError> {
        super::keys::check_tenant(tenant)?;
        for quota in [&limits.limit, &limits.own] {
            quota.check().map_err(AuthError::Invalid)?;
        }
        let text = serde_json::to_string(&limits).map_err(std::io::Error::other)?;
        self.conn()?.execute(
            "INSERT INTO tenants (tenant, limits) VALUES (?1, ?2) \
             ON CONFLICT (tenant) DO UPDATE SET limits = excluded.limits",
            params![tenant, text],
        )?;
        let detail = serde_json::to_value(&limits).unwrap_or_default();
        self.record(actor, Some(tenant), "quota.set", Some(tenant), detail);
        Ok(TenantQuota::new(tenant, limits))
    }
}
