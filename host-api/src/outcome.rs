//! How an attempt ended.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How one attempt at a piece of work ended (SPEC §6).
///
/// Exactly one class per attempt. The class, not the message, is what
/// callers and retry policies act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutcomeClass {
    /// The work produced a result.
    Ok,
    /// The tool reported a permanent failure (`invalid-args` or `failed`).
    ToolError,
    /// The tool reported a transient failure.
    Retryable,
    /// The guest trapped: a panic, an unreachable, an out-of-bounds access
    /// or a stack overflow.
    Trap,
    /// The attempt ran past its wall-clock deadline.
    Timeout,
    /// The attempt used up its fuel (instruction budget).
    OutOfFuel,
    /// The attempt asked for more memory than it was allowed.
    OutOfMemory,
    /// The caller cancelled the attempt.
    Canceled,
    /// The backend itself failed (resources exhausted, an I/O error); not
    /// the work's fault.
    BackendError,
}

impl OutcomeClass {
    /// Every class, in declaration order.
    pub const ALL: [OutcomeClass; 9] = [
        Self::Ok,
        Self::ToolError,
        Self::Retryable,
        Self::Trap,
        Self::Timeout,
        Self::OutOfFuel,
        Self::OutOfMemory,
        Self::Canceled,
        Self::BackendError,
    ];

    /// The stable snake_case name used in JSON, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::Retryable => "retryable",
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::OutOfFuel => "out_of_fuel",
            Self::OutOfMemory => "out_of_memory",
            Self::Canceled => "canceled",
            Self::BackendError => "backend_error",
        }
    }

    /// Whether a retry policy retries this class by default.
    ///
    /// `trap`, `timeout` and `retryable` may go away on another try;
    /// `out_of_fuel` and `out_of_memory` are deterministic and would fail
    /// the same way, so only a policy that asks for it retries them.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Trap | Self::Timeout | Self::Retryable)
    }
}

/// A set of [`OutcomeClass`]es, as a retry policy's `retry_on`: in JSON
/// a list of class names, in memory two bytes.
///
/// ```
/// use work_host_api::{OutcomeClass, OutcomeSet};
/// let set: OutcomeSet = [OutcomeClass::Trap, OutcomeClass::OutOfFuel].into_iter().collect();
/// assert!(set.contains(OutcomeClass::OutOfFuel));
/// assert_eq!(serde_json::to_string(&set).unwrap(), r#"["trap","out_of_fuel"]"#);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OutcomeSet(u16);

impl OutcomeSet {
    /// No class.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The classes [`OutcomeClass::is_retryable`] says a policy retries by
    /// default.
    pub fn retryable() -> Self {
        OutcomeClass::ALL
            .into_iter()
            .filter(|class| class.is_retryable())
            .collect()
    }

    const fn bit(class: OutcomeClass) -> u16 {
        1 << class as u16
    }

    /// Whether `class` is in the set.
    pub const fn contains(self, class: OutcomeClass) -> bool {
        self.0 & Self::bit(class) != 0
    }

    /// Adds `class`.
    pub fn insert(&mut self, class: OutcomeClass) {
        self.0 |= Self::bit(class);
    }

    /// Removes `class`.
    pub fn remove(&mut self, class: OutcomeClass) {
        self.0 &= !Self::bit(class);
    }

    /// The set with `class` added.
    #[must_use]
    pub fn with(mut self, class: OutcomeClass) -> Self {
        self.insert(class);
        self
    }

    /// Whether the set has no class.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The classes in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = OutcomeClass> {
        OutcomeClass::ALL
            .into_iter()
            .filter(move |class| self.contains(*class))
    }
}

impl FromIterator<OutcomeClass> for OutcomeSet {
    fn from_iter<I: IntoIterator<Item = OutcomeClass>>(iter: I) -> Self {
        let mut set = Self::empty();
        for class in iter {
            set.insert(class);
        }
        set
    }
}

impl fmt::Debug for OutcomeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for OutcomeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for OutcomeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<OutcomeClass>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for OutcomeSet {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(<OutcomeClass as utoipa::PartialSchema>::schema())
            .description(Some("Outcome classes, by name"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for OutcomeSet {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_match_as_str() {
        for class in OutcomeClass::ALL {
            let json = serde_json::to_string(&class).unwrap();
            assert_eq!(json, format!("\"{}\"", class.as_str()));
            assert_eq!(serde_json::from_str::<OutcomeClass>(&json).unwrap(), class);
        }
    }

    #[test]
    fn outcome_sets_round_trip_as_lists() {
        let set = OutcomeSet::retryable().with(OutcomeClass::OutOfMemory);
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["retryable","trap","timeout","out_of_memory"]"#);
        assert_eq!(serde_json::from_str::<OutcomeSet>(&json).unwrap(), set);
        assert!(serde_json::from_str::<OutcomeSet>(r#"["nope"]"#).is_err());
        let mut set = set;
        set.remove(OutcomeClass::Trap);
        assert!(!set.contains(OutcomeClass::Trap));
        assert!(set.contains(OutcomeClass::Timeout));
        assert!(OutcomeSet::empty().is_empty());
    }

    #[test]
    fn only_transient_classes_retry_by_default() {
        let retried: Vec<_> = OutcomeClass::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(
            retried,
            [
                OutcomeClass::Retryable,
                OutcomeClass::Trap,
                OutcomeClass::Timeout
            ]
        );
    }
}
