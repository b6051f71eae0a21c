//! Tools that check what agents say and that agents act with: a sandbox that runs untrusted
//! Python, a calculator, a workspace that confines file tools, and a client for tools served
//! by MCP servers.
//!
//! An agent's config names the tools it may be used with (`tools = ["python"]`); strategies
//! that run an agent's code or check its arithmetic refuse agents without the permission.
pub mod calc;
mod confine;
mod isolation;
pub mod mcp;
pub mod sandbox;
pub mod workspace;

pub use confine::Limits;
pub use isolation::{isolation, run_python, run_python_in, Isolation, Layer};
pub use mcp::{McpClient, McpServer, McpTool};
pub use sandbox::{Outcome, Status};
pub use workspace::Workspace;

use serde::{Deserialize, Serialize};

/// A tool an agent may be allowed to use; the command line's names are the serde names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// Run code in the sandbox (`run_python`).
    Python,
    /// Check arithmetic with the safe evaluator (`calc`).
    Calculator,
}

impl std::fmt::Display for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}
