//! Tools that check what agents say: a sandbox that runs untrusted Python, and a calculator.
//!
//! An agent's config names the tools it may be used with (`tools = ["python"]`); strategies
//! that run an agent's code or check its arithmetic refuse agents without the permission.
pub mod calc;
mod confine;
mod isolation;
pub mod sandbox;

pub use confine::Limits;
pub use isolation::{isolation, run_python, Isolation, Layer};
pub use sandbox::{Outcome, Status};

use serde::{Deserialize, Serialize};

/// A tool an agent may be allowed to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// Run code in the sandbox (`run_python`).
    Python,
    /// Check arithmetic with the safe evaluator (`calc`).
    Calculator,
}

impl Tool {
    const NAMES: [(&'static str, Tool); 2] =
        [("python", Tool::Python), ("calculator", Tool::Calculator)];
}

impl std::str::FromStr for Tool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|&(_, t)| t)
            .ok_or_else(|| format!("unknown tool `{s}` (known tools: python, calculator)"))
    }
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = Self::NAMES.iter().find(|(_, t)| t == self).map(|(n, _)| *n);
        f.write_str(name.unwrap_or("?"))
    }
}
