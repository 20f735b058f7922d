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

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
