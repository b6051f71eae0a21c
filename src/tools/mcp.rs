//! Tools served by an MCP server over stdio (the Model Context Protocol, with `rmcp`, the
//! official Rust SDK): start the server's command, initialize, list its tools, call them.
//!
//! Whatever the server does, a call ends in a value: a server that fails to start, dies,
//! hangs past the per-call timeout, writes garbage on stdout (`rmcp` skips lines that are not
//! JSON, so such a call ends at the timeout) or answers `isError` gives an `Err` whose
//! message names the server and the tool and can be shown to the model.
use anyhow::{anyhow, bail, Context, Result};
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ResourceContents};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// An MCP server as an agent config declares it (`[[agent.mcp]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// Names the server in errors and traces.
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Set for the server, on top of the few variables it inherits (`INHERITED_ENV`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds one call may take (the start may take at least `START_SECONDS`).
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

fn default_timeout_s() -> f64 {
    30.0
}

/// What a server inherits of our environment: the variables the official Python SDK passes
/// on POSIX (`mcp.client.stdio.DEFAULT_INHERITED_ENV_VARS`), so no secret of ours (API keys,
/// tokens) reaches a third-party server unless the config names it in `env`.
const INHERITED_ENV: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// Seconds a server may take to start (initialize and list its tools) if its `timeout_s` is
/// shorter: starting loads an interpreter and its packages, or a launcher such as npx fetches
/// the server first.
const START_SECONDS: u64 = 60;

/// Bytes kept of the server's stderr, to explain a failed start or a death.
const STDERR_KEPT: usize = 4096;

/// A tool a server offers.
#[derive(Debug, Clone)]
pub struct McpTool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema object for the call's arguments.
    pub input_schema: serde_json::Value,
}

/// A running server; the process (and its process group) is killed when this drops.
pub struct McpClient {
    name: String,
    service: RunningService<RoleClient, ()>,
    tools: Vec<McpTool>,
    timeout: Duration,
    /// The server leads its own process group (see `start`).
    pgid: Option<i32>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl McpClient {
    /// Starts the server process and lists its tools (error names the server and says why).
    pub async fn start(spec: &McpServer) -> Result<Self> {
        let name = &spec.name;
        let timeout = Duration::try_from_secs_f64(spec.timeout_s)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                anyhow!(
                    "MCP server `{name}`: timeout_s = {} is not a positive number of seconds",
                    spec.timeout_s
                )
            })?;
        let mut cmd = tokio::process::Command::new(&spec.command);
        cmd.args(&spec.args).env_clear();
        for key in INHERITED_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        // A group of its own, so that drop also kills what a launcher (npx, uvx, a shell
        // script) started; it also keeps the terminal's Ctrl-C away from it.
        cmd.envs(&spec.env).process_group(0).kill_on_drop(true);
        let (process, stderr_pipe) = TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "MCP server `{name}`: cannot start `{}`: check `command` (on PATH, or a full path) and `args`",
                    spec.command
                )
            })?;
        let pgid = process.id().map(|p| p as i32);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = stderr_pipe {
            let kept = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                    k.extend_from_slice(&buf[..n]);
                    let over = k.len().saturating_sub(STDERR_KEPT);
                    k.drain(..over);
                }
            });
        }
        let start_timeout = timeout.max(Duration::from_secs(START_SECONDS));
        let service = match tokio::time::timeout(start_timeout, ().serve(process)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                kill_group(pgid);
                bail!(
                    "MCP server `{name}` (`{}`) failed to initialize: {e}{}",
                    spec.command,
                    stderr_tail(&stderr)
                )
            }
            Err(_) => {
                kill_group(pgid);
                bail!(
                    "MCP server `{name}` (`{}`) did not finish initializing within {} s{}",
                    spec.command,
                    start_timeout.as_secs_f64(),
                    stderr_tail(&stderr)
                )
            }
        };
        // From here on an early return drops `client`, which kills the process.
        let mut client = Self {
            name: name.clone(),
            service,
            tools: Vec::new(),
            timeout,
            pgid,
            stderr,
        };
        let listed = tokio::time::timeout(start_timeout, client.service.list_all_tools())
            .await
            .map_err(|_| anyhow!("no answer within {} s", start_timeout.as_secs_f64()))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .map_err(|e| {
                anyhow!(
                    "MCP server `{name}` did not list its tools: {e}{}",
                    client.stderr_tail()
                )
            })?;
        client.tools = listed
            .into_iter()
            .map(|t| McpTool {
                name: t.name.into_owned(),
                description: t.description.map(|d| d.into_owned()),
                input_schema: serde_json::Value::Object((*t.input_schema).clone()),
            })
            .collect();
        Ok(client)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tools(&self) -> &[McpTool] {
        &self.tools
    }

    /// Calls a tool; its text content joined. A dead server, a timeout, a garbage answer or
    /// an `isError` result is an Err whose message can be shown to the model.
    pub async fn call(&self, tool: &str, arguments: serde_json::Value) -> Result<String> {
        let server = &self.name;
        if !self.tools.iter().any(|t| t.name == tool) {
            let names: Vec<&str> = self.tools.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "MCP server `{server}` has no tool `{tool}`; it has: {}",
                names.join(", ")
            );
        }
        let mut params = CallToolRequestParams::new(tool.to_string());
        match arguments {
            serde_json::Value::Object(args) => params = params.with_arguments(args),
            serde_json::Value::Null => {}
            other => bail!(
                "MCP server `{server}`, tool `{tool}`: arguments must be a JSON object, not {other}"
            ),
        }
        let result = match tokio::time::timeout(self.timeout, self.service.call_tool(params)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(rmcp::ServiceError::TransportClosed)) => bail!(
                "MCP server `{server}`, tool `{tool}`: the server is gone (it exited or closed its output){}",
                self.stderr_tail()
            ),
            Ok(Err(e)) => bail!(
                "MCP server `{server}`, tool `{tool}`: the call failed: {e}{}",
                self.stderr_tail()
            ),
            Err(_) => bail!(
                "MCP server `{server}`, tool `{tool}`: no answer within {} s",
                self.timeout.as_secs_f64()
            ),
        };
        let text = content_text(&result);
        if result.is_error == Some(true) {
            bail!("MCP server `{server}`, tool `{tool}` reported an error: {text}");
        }
        Ok(text)
    }

    fn stderr_tail(&self) -> String {
        stderr_tail(&self.stderr)
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}

/// SIGKILL to the server's process group. A group already gone (the server died and was
/// reaped) makes this fail harmlessly; its number reused by a new group leader meanwhile is
/// the usual pid race, accepted as every `kill` by pid accepts it.
fn kill_group(pgid: Option<i32>) {
    if let Some(pgid) = pgid.filter(|p| *p > 0) {
        // SAFETY: kill(2) has no memory effects; a negative pid names a process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The last line of the server's stderr, as ": stderr: …", or nothing.
fn stderr_tail(stderr: &Mutex<Vec<u8>>) -> String {
    let bytes = stderr.lock().unwrap_or_else(|e| e.into_inner());
    let text = String::from_utf8_lossy(&bytes);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!(" (its stderr ends: {})", line.trim()),
        None => String::new(),
    }
}

/// The result's content as text, one block per line; blocks that are not text are described.
/// With no content, the structured content as JSON.
fn content_text(result: &CallToolResult) -> String {
    let blocks: Vec<String> = result
        .content
        .iter()
        .map(|c| match c {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => {
                format!("[image, {}, {} bytes of base64]", i.mime_type, i.data.len())
            }
            ContentBlock::Audio(a) => {
                format!("[audio, {}, {} bytes of base64]", a.mime_type, a.data.len())
            }
            ContentBlock::Resource(r) => match &r.resource {
                ResourceContents::TextResourceContents { text, .. } => text.clone(),
                ResourceContents::BlobResourceContents { uri, blob, .. } => {
                    format!("[resource {uri}, {} bytes of base64]", blob.len())
                }
                _ => "[a resource of a kind this client does not know]".into(),
            },
            ContentBlock::ResourceLink(l) => format!("[resource link {}]", l.uri),
            _ => "[content of a kind this client does not know]".into(),
        })
        .collect();
    if blocks.is_empty() {
        if let Some(s) = &result.structured_content {
            return s.to_string();
        }
    }
    blocks.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_entry_has_defaults_and_refuses_unknown_keys() {
        let s: McpServer = toml::from_str("name = \"n\"\ncommand = \"python3\"").unwrap();
        assert_eq!(s.timeout_s, 30.0);
        assert!(s.args.is_empty() && s.env.is_empty());
        let e = toml::from_str::<McpServer>("name = \"n\"\ncommand = \"x\"\ncmd = \"y\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cmd"), "{e}");
    }
}
