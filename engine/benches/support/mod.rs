//! What the benches share: knobs from the environment, the call they
//! make, and how they summarise samples.

#![allow(dead_code, reason = "each bench uses some of these")]

/// The `calculator` call every bench makes.
pub const ARGS: &str = r#"{"op": "add", "a": 2, "b": 2}"#;

/// The number in the environment variable `name`, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The middle sample.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
