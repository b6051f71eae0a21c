//! Tools from the MCP servers an agent file declares (`[[agent.mcp]]`): started when a run
//! starts, offered under their own names beside the built-ins, and called through
//! `tools::McpClient`. A server that dies or answers garbage makes its call a tool error the
//! model reads; the run goes on.
use super::toolbox::{Done, BUILTINS, FINAL};
use crate::engine::ToolDef;
use crate::tools::{McpClient, McpServer};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The running servers of a run, by tool name.
#[derive(Default)]
pub(super) struct McpTools {
    defs: Vec<ToolDef>,
    /// Tool name → the server that offers it.
    by_tool: BTreeMap<String, Arc<McpClient>>,
}

impl McpTools {
    /// Starts every server and lists its tools. A tool whose name is a built-in's,
    /// `final_answer`, or another server's is an error: the model could not tell them apart.
    pub async fn start(servers: &[McpServer]) -> Result<Self> {
        let mut out = McpTools::default();
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for spec in servers {
            let client = Arc::new(McpClient::start(spec).await.with_context(|| {
                format!("starting MCP server `{}` of [[agent.mcp]]", spec.name)
            })?);
            for t in client.tools() {
                if BUILTINS.contains(&t.name.as_str()) || t.name == FINAL {
                    bail!(
                        "MCP server `{}` offers a tool named `{}`, which is a built-in tool's \
                         name: rename it in the server or leave the server out",
                        spec.name,
                        t.name
                    );
                }
                if let Some(other) = owner.insert(t.name.clone(), spec.name.clone()) {
                    bail!(
                        "MCP servers `{other}` and `{}` both offer a tool named `{}`: leave one \
                         of them out",
                        spec.name,
                        t.name
                    );
                }
                out.defs.push(ToolDef {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.input_schema.clone(),
                });
                out.by_tool.insert(t.name.clone(), client.clone());
            }
        }
        Ok(out)
    }

    pub fn defs(&self) -> &[ToolDef] {
        &self.defs
    }

    pub fn offers(&self, tool: &str) -> bool {
        self.by_tool.contains_key(tool)
    }

    /// Calls `tool`; a failure is a `Done` that says what went wrong.
    pub async fn call(&self, tool: &str, arguments: &Value) -> Done {
        let Some(client) = self.by_tool.get(tool) else {
            return Done {
                ok: false,
                output: format!("error: no MCP tool `{tool}`"),
            };
        };
        match client.call(tool, arguments.clone()).await {
            Ok(output) => Done { ok: true, output },
            Err(e) => Done {
                ok: false,
                output: format!("error: {e:#}"),
            },
        }
    }
}
