//! The built-in tools an agent may be given: what the model is told of each (a [`ToolDef`]
//! short and plain enough for a 0.5B model to follow) and how a call of each runs. `delegate`
//! is offered here but run by the loop (it starts a sub-run).
use crate::engine::ToolDef;
use crate::tools::{calc, run_python_in, Limits, Outcome, Status, Workspace};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The tool whose call is the run's answer (offered to every agent).
pub const FINAL: &str = "final_answer";

/// Names of the built-in tools, as `tools = [...]` lists them.
pub const BUILTINS: &[&str] = &[
    "python",
    "calculator",
    "read_file",
    "write_file",
    "list_dir",
    "delegate",
];

/// The definition of built-in `name` (or of `final_answer`, which every agent is offered);
/// `delegates` are the agents `delegate` may name.
pub fn def(name: &str, delegates: &[String]) -> ToolDef {
    let path = json!({"type": "string", "description": "A path relative to the workspace."});
    let (description, parameters) = match name {
        "python" => (
            "Run a Python 3 script and get back what it prints; the value of its last line \
             is printed too. Files in the current directory persist between calls.",
            json!({"type": "object", "properties": {"code": {"type": "string"}},
                   "required": ["code"]}),
        ),
        "calculator" => (
            "Evaluate an arithmetic expression: numbers, + - * / ^ % and parentheses, e.g. \
             (17 + 3) * 23.",
            json!({"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}),
        ),
        "read_file" => (
            "Read a text file of the workspace.",
            json!({"type": "object", "properties": {"path": path}, "required": ["path"]}),
        ),
        "write_file" => (
            "Write text to a file of the workspace (folders are made as needed).",
            json!({"type": "object", "properties": {"path": path, "content": {"type": "string"}},
                   "required": ["path", "content"]}),
        ),
        "list_dir" => (
            "List a folder of the workspace (\".\" for its top); folders end in /.",
            json!({"type": "object", "properties": {"path": path}, "required": ["path"]}),
        ),
        "final_answer" => (
            "Give the final answer to the task. Call it as soon as you know the answer, for \
             example from a tool's result.",
            json!({"type": "object", "properties": {"answer": {"type": "string"}},
                   "required": ["answer"]}),
        ),
        "delegate" => {
            let mut props = json!({"task": {"type": "string",
                "description": "The sub-task, complete in itself: the helper sees nothing else."}});
            if !delegates.is_empty() {
                props["agent"] = json!({"type": "string", "enum": delegates});
            }
            return ToolDef {
                name: name.into(),
                description: Some(
                    "Hand a sub-task to a helper agent with the same tools; returns its answer."
                        .into(),
                ),
                parameters: closed(
                    json!({"type": "object", "properties": props, "required": ["task"]}),
                ),
            };
        }
        other => unreachable!("`{other}` is not a built-in tool (checked at load)"),
    };
    ToolDef {
        name: name.into(),
        description: Some(description.into()),
        parameters: closed(parameters),
    }
}

/// The schema with no arguments beyond its own (the 0.5B model added an empty `content` to
/// calculator calls otherwise).
fn closed(mut schema: Value) -> Value {
    schema["additionalProperties"] = json!(false);
    schema
}

/// What a call gave back: whether it succeeded and the text the model is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub ok: bool,
    pub output: String,
}

/// Runs the built-ins other than `delegate`, in one workspace.
#[derive(Clone)]
pub struct Toolbox {
    pub workspace: Arc<Workspace>,
    pub limits: Limits,
}

impl Toolbox {
    pub fn new(workspace: Arc<Workspace>, tool_timeout_s: f64) -> Self {
        let limits = Limits {
            timeout: Duration::from_secs_f64(tool_timeout_s),
            cpu_seconds: tool_timeout_s.ceil() as u64,
            ..Limits::default()
        };
        Self { workspace, limits }
    }

    /// Runs one call; a failure (bad arguments, a crash, a refused path) is a `Done` that says
    /// what went wrong, for the model to read.
    pub async fn call(&self, name: &str, args: &Value) -> Done {
        let this = self.clone();
        let (name, args) = (name.to_string(), args.clone());
        // A sandbox run's span goes under the call's, across the thread.
        let span = tracing::Span::current();
        let run =
            tokio::task::spawn_blocking(move || span.in_scope(|| this.call_blocking(&name, &args)));
        match run.await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => Done {
                ok: false,
                output: format!("error: {e:#}"),
            },
            Err(e) => Done {
                ok: false,
                output: format!("error: the tool crashed: {e}"),
            },
        }
    }

    fn call_blocking(&self, name: &str, args: &Value) -> Result<Done> {
        let ws = &self.workspace;
        let ok = |output: String| Ok(Done { ok: true, output });
        match name {
            "python" => {
                let code = last_value_printed(arg(name, args, "code")?);
                let out = run_python_in(&code, ws.root(), &self.limits)?;
                Ok(python_report(&out))
            }
            "calculator" => {
                let v = calc::eval(arg(name, args, "expression")?)?;
                ok(calc::show(v))
            }
            "read_file" => ok(ws.read_file(arg(name, args, "path")?)?),
            "write_file" => {
                ok(ws.write_file(arg(name, args, "path")?, arg(name, args, "content")?)?)
            }
            "list_dir" => {
                let listing =
                    ws.list_dir(args.get("path").and_then(Value::as_str).unwrap_or("."))?;
                ok(if listing.is_empty() {
                    "(empty)".into()
                } else {
                    listing
                })
            }
            other => bail!("no tool `{other}`"),
        }
    }
}

/// A string argument, or an error naming what the call lacks.
fn arg<'a>(tool: &str, args: &'a Value, key: &str) -> Result<&'a str> {
    args.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("{tool} needs a string argument `{key}`; the call gave {args}"))
}

/// `code` run so that the value of its last statement, when that is an expression or a
/// `return` (which small models write at the top level), is printed, as a notebook shows a
/// cell's last value. A last line that already calls `print` is left alone.
fn last_value_printed(code: &str) -> String {
    // A JSON string is a valid Python string literal (serde_json writes no `\/`).
    let src = serde_json::to_string(code).expect("a string serializes");
    format!(
        "import ast as _ast\n\
         _tree = _ast.parse({src}, 'main.py')\n\
         _last = _tree.body[-1] if _tree.body else None\n\
         if isinstance(_last, (_ast.Expr, _ast.Return)) and _last.value is not None and not (\n\
         \x20   isinstance(_last.value, _ast.Call) and getattr(_last.value.func, 'id', '') == 'print'):\n\
         \x20   _tree.body[-1] = _ast.Expr(_ast.Call(_ast.Name('print', _ast.Load()), [_last.value], []))\n\
         \x20   _ast.fix_missing_locations(_tree)\n\
         exec(compile(_tree, 'main.py', 'exec'), {{'__name__': '__main__'}})\n"
    )
}

/// What the model reads of a python run: its output and, when it failed, how.
fn python_report(o: &Outcome) -> Done {
    let ok = o.status == Status::Ok;
    let mut s = String::new();
    if !ok {
        s.push_str(&format!("python failed: {}\n", o.reason));
    }
    if !o.stdout.is_empty() {
        if !ok || !o.stderr.is_empty() {
            s.push_str("stdout:\n");
        }
        s.push_str(&o.stdout);
    }
    if !o.stderr.is_empty() {
        s.push_str(&format!("\nstderr:\n{}", o.stderr));
    }
    if s.trim().is_empty() {
        s = "(no output: print() what you need)".into();
    }
    Done {
        ok,
        output: s.trim_end().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_has_an_object_schema() {
        for name in BUILTINS {
            let d = def(name, &["checker".into()]);
            assert_eq!(d.parameters["type"], "object", "{name}");
            assert!(d.description.is_some());
        }
        assert_eq!(
            def("delegate", &["checker".into()]).parameters["properties"]["agent"]["enum"],
            json!(["checker"])
        );
        assert!(def("delegate", &[]).parameters["properties"]
            .get("agent")
            .is_none());
    }

    #[tokio::test]
    async fn calls_and_their_failures_come_back_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let tb = Toolbox::new(Arc::new(Workspace::open(dir.path()).unwrap()), 5.0);
        let d = tb.call("calculator", &json!({"expression": "17*23"})).await;
        assert_eq!(
            d,
            Done {
                ok: true,
                output: "391".into()
            }
        );
        let d = tb.call("calculator", &json!({"expr": "1"})).await;
        assert!(
            !d.ok && d.output.contains("needs a string argument `expression`"),
            "{d:?}"
        );
        let d = tb
            .call("write_file", &json!({"path": "a/b.txt", "content": "hi"}))
            .await;
        assert!(d.ok, "{d:?}");
        let d = tb.call("read_file", &json!({"path": "a/b.txt"})).await;
        assert_eq!(d.output, "hi");
        let d = tb.call("list_dir", &json!({"path": "."})).await;
        assert_eq!(d.output, "a/");
        let d = tb.call("read_file", &json!({"path": "../x"})).await;
        assert!(!d.ok && d.output.starts_with("error:"), "{d:?}");
    }

    #[tokio::test]
    async fn python_files_persist_in_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let tb = Toolbox::new(Arc::new(Workspace::open(dir.path()).unwrap()), 10.0);
        let code = "open('n.txt', 'w').write('7')\nprint('saved')";
        let d = tb.call("python", &json!({"code": code})).await;
        assert_eq!(
            d,
            Done {
                ok: true,
                output: "saved".into()
            }
        );
        let d = tb
            .call(
                "python",
                &json!({"code": "print(int(open('n.txt').read()) * 6)"}),
            )
            .await;
        assert_eq!(d.output, "42");
        assert_eq!(
            tb.call("read_file", &json!({"path": "n.txt"})).await.output,
            "7"
        );
        let d = tb
            .call("python", &json!({"code": "raise ValueError('bad')"}))
            .await;
        assert!(!d.ok && d.output.contains("ValueError: bad"), "{d:?}");
        let d = tb.call("python", &json!({"code": "x = 1"})).await;
        assert!(d.ok && d.output.contains("no output"), "{d:?}");
        // The last line's value is printed, a top-level `return` included, once.
        let d = tb
            .call(
                "python",
                &json!({"code": "import hashlib; return hashlib.sha256(b'a').hexdigest()[:8]"}),
            )
            .await;
        assert_eq!(d.output, "ca978112");
        let d = tb.call("python", &json!({"code": "x = 6\nx * 7"})).await;
        assert_eq!(d.output, "42");
        let d = tb.call("python", &json!({"code": "print('once')"})).await;
        assert_eq!(d.output, "once");
    }
}
