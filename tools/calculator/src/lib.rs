//! Run with: `cargo build --release --target wasm32-wasip2 -p calculator`,
//! then `work-engine register target/wasm32-wasip2/release/calculator.wasm`
//! and `work-engine call calculator --args '{"op": "add", "a": 2, "b": 2}'`.

use schemars::JsonSchema;
use serde::Deserialize;
use work_guest_sdk::{ToolError, tool};

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Deserialize, JsonSchema)]
struct Args {
    /// The operation: add, sub, mul or div.
    op: Op,
    /// The left operand.
    a: f64,
    /// The right operand.
    b: f64,
}

tool! {
    /// Adds, subtracts, multiplies or divides two numbers.
    fn calculator(args: Args) -> Result<f64, ToolError> {
        let Args { op, a, b } = args;
        match op {
            Op::Add => Ok(a + b),
            Op::Sub => Ok(a - b),
            Op::Mul => Ok(a * b),
            Op::Div if b == 0.0 => Err(ToolError::failed("division by zero")),
            Op::Div => Ok(a / b),
        }
    }
}
