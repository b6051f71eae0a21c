//! The loop: each step an ensemble (one agent, or several voting) answers the conversation
//! so far with text or tool calls; calls are authorized, run and fed back; text is the answer.
//! Delegates are sub-runs of the same loop sharing the tree's token budget and deadline.
use super::config::AgentConfig;
use super::journal::{Event, Journal};
use super::mcp::McpTools;
use super::policy::{Decision, Ruling};
use super::toolbox::{def, Done, Toolbox, FINAL};
use super::trace::{CallTrace, RunTrace, StepTrace, Stop, Usage};
use crate::engine::{Engine, Message, ToolCall, ToolDef};
use crate::ensemble::calls::{self, Choice, Tools};
use crate::ensemble::spans;
use crate::ensemble::{Ask, Runner, Trace};
use crate::tools::Workspace;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The system prompt unless the config gives one.
pub const DEFAULT_SYSTEM: &str = "You are an agent that completes the user's task with tools. \
When you need to compute, run code or use files, call one tool and wait for its result. When \
you know the answer, reply with the answer alone, in plain text, without calling a tool.";

/// A tool's output is cut to this many bytes before the model reads it.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024;

/// Model calls per step before the run fails.
const ATTEMPTS: usize = 3;

/// What a run is asked.
#[derive(Debug, Clone)]
pub enum Task {
    Text(String),
    /// A conversation (the server's requests): its last user turn is the task.
    Conversation(Vec<Message>),
}

impl Task {
    /// The task in words: the text, or the conversation's last user turn.
    pub fn text(&self) -> String {
        match self {
            Task::Text(t) => t.clone(),
            Task::Conversation(m) => m
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default(),
        }
    }

    /// The first messages of a run: the system prompt, then the task.
    pub fn messages(&self, cfg: &AgentConfig) -> Vec<Message> {
        let system = Message::new(
            "system",
            cfg.spec.system.as_deref().unwrap_or(DEFAULT_SYSTEM),
        );
        match self {
            Task::Text(t) => vec![system, Message::new("user", t)],
            Task::Conversation(m) if m.first().is_some_and(|m| m.role == "system") => m.clone(),
            Task::Conversation(m) => std::iter::once(system).chain(m.iter().cloned()).collect(),
        }
    }
}

/// How a run may interact with its caller.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `ask` rules prompt on the terminal; when false they deny (the config was checked with
    /// `check_unattended`, so none should be met).
    pub interactive: bool,
    /// One line per step on stderr.
    pub progress: bool,
}

/// The run directory's files.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join("journal.jsonl")
}
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.toml")
}
pub fn trace_path(dir: &Path) -> PathBuf {
    dir.join("trace.json")
}

/// Runs `task` to an answer or a limit, journaling in `dir` (made if needed).
pub async fn run(
    engine: Engine,
    cfg: &AgentConfig,
    task: Task,
    dir: &Path,
    opts: &RunOptions,
) -> Result<RunTrace> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make the run directory {}", dir.display()))?;
    cfg.save(&config_path(dir))?;
    let mut journal = Journal::open(&journal_path(dir))?;
    journal.write(&Event::Start {
        task: task.text(),
        agent: cfg.name().into(),
        version: super::journal::VERSION,
        messages: match &task {
            Task::Text(_) => None,
            Task::Conversation(m) => Some(m.clone()),
        },
    })?;
    let mcp = McpTools::start(&cfg.spec.mcp).await?;
    let tree = Tree::new(engine, cfg, dir, opts, 0, mcp)?;
    let state = State::new(task.text(), task.messages(cfg));
    let agent = Agent {
        tree: &tree,
        cfg,
        depth: 0,
        journal: Some(Mutex::new(journal)),
    };
    let span = spans::agent_run(cfg.name(), 0);
    let t = agent
        .finish(state, Vec::new(), dir)
        .instrument(span.clone())
        .await;
    if let Ok(t) = &t {
        spans::agent_ended(&span, t);
    }
    t
}

/// What a run and its delegates share: the engine, the budget, the deadline, the workspace.
pub(super) struct Tree {
    engine: Engine,
    /// Completion tokens the tree has spent.
    spent: AtomicUsize,
    max_tokens: usize,
    deadline: Instant,
    max_depth: usize,
    workspace: Arc<Workspace>,
    opts: RunOptions,
    /// (agent, rule) pairs the user answered "always" to.
    always: Mutex<HashSet<(String, usize)>>,
    /// The top agent's MCP servers, offered to it and to its copies.
    mcp: McpTools,
}

impl Tree {
    pub(super) fn new(
        engine: Engine,
        cfg: &AgentConfig,
        dir: &Path,
        opts: &RunOptions,
        spent: usize,
        mcp: McpTools,
    ) -> Result<Self> {
        Ok(Tree {
            engine,
            spent: AtomicUsize::new(spent),
            max_tokens: cfg.spec.max_tokens,
            deadline: Instant::now() + Duration::from_secs_f64(cfg.spec.timeout_s),
            max_depth: cfg.spec.max_depth,
            workspace: Arc::new(Workspace::open(&dir.join("workspace"))?),
            opts: opts.clone(),
            always: Mutex::new(HashSet::new()),
            mcp,
        })
    }

    fn left(&self) -> usize {
        self.max_tokens
            .saturating_sub(self.spent.load(Ordering::SeqCst))
    }
}

/// A run's conversation and record so far.
pub(super) struct State {
    pub task: String,
    pub messages: Vec<Message>,
    pub steps: Vec<StepTrace>,
    /// The tree's tokens under this run (its steps and its delegates').
    pub usage: Usage,
    pub notes: Vec<String>,
    pub started: Instant,
    /// Steps drawn warmer because the model was stuck on a failed call.
    pub warm_draws: usize,
}

impl State {
    pub(super) fn new(task: String, messages: Vec<Message>) -> Self {
        State {
            task,
            messages,
            steps: Vec::new(),
            usage: Usage::default(),
            notes: Vec::new(),
            started: Instant::now(),
            warm_draws: 0,
        }
    }
}

/// How a run ended: its answer, if any, and why it stopped.
type Ended = (Option<String>, Stop);

/// One agent of the tree at its depth; only the top one journals.
pub(super) struct Agent<'a> {
    pub tree: &'a Tree,
    pub cfg: &'a AgentConfig,
    pub depth: usize,
    pub journal: Option<Mutex<Journal>>,
}

impl Agent<'_> {
    fn log(&self, e: Event) -> Result<()> {
        match &self.journal {
            Some(j) => j.lock().expect("journal lock").write(&e),
            None => Ok(()),
        }
    }

    /// Runs `pending` (calls of the last step still to answer), then the loop; writes the
    /// final event and DIR/trace.json.
    pub(super) async fn finish(
        &self,
        mut state: State,
        last: Vec<(ToolCall, Option<String>)>,
        dir: &Path,
    ) -> Result<RunTrace> {
        let step = state.steps.last().map_or(1, |s| s.step);
        // Killed after the model answered but before the final event.
        let answered = last.iter().find(|(c, _)| c.name == FINAL);
        if let Some((c, _)) = answered {
            return self.end(state, Some(final_text(c)), Stop::Answer, dir);
        }
        for (call, answered) in last {
            let output = match answered {
                Some(output) => output,
                None => {
                    let c = self.answer_call(step, &call, &mut state).await?;
                    let output = c.output.clone();
                    if let Some(s) = state.steps.last_mut() {
                        s.calls.push(c);
                    }
                    output
                }
            };
            state.messages.push(tool_message(&call.id, &output));
        }
        let (answer, stop) = self.drive(&mut state).await?;
        self.end(state, answer, stop, dir)
    }

    /// Writes the final event and DIR/trace.json.
    fn end(
        &self,
        state: State,
        answer: Option<String>,
        stop: Stop,
        dir: &Path,
    ) -> Result<RunTrace> {
        self.log(Event::Final {
            answer: answer.clone(),
            stop,
        })?;
        let trace = self.trace(state, answer, stop);
        std::fs::write(trace_path(dir), serde_json::to_string_pretty(&trace)?)
            .with_context(|| format!("cannot write {}", trace_path(dir).display()))?;
        Ok(trace)
    }

    fn trace(&self, state: State, answer: Option<String>, stop: Stop) -> RunTrace {
        let mut notes = state.notes;
        if answer.is_none() {
            notes.push(format!(
                "stopped at {stop} without an answer; the last step's text is in `steps`"
            ));
        }
        RunTrace {
            agent: self.cfg.name().into(),
            task: state.task,
            answer,
            stop,
            steps: state.steps,
            usage: state.usage,
            seconds: state.started.elapsed().as_secs_f64(),
            notes,
        }
    }

    /// The tools offered: the config's built-ins, then its MCP servers' tools.
    fn defs(&self) -> Vec<ToolDef> {
        let delegates: Vec<String> = self.cfg.delegates.keys().cloned().collect();
        let mut defs: Vec<ToolDef> = self
            .cfg
            .spec
            .tools
            .iter()
            .map(|t| def(t, &delegates))
            .collect();
        if self.has_mcp() {
            defs.extend(self.tree.mcp.defs().iter().cloned());
        }
        defs
    }

    /// Whether this agent is offered the tree's MCP tools: the top agent declares them, and
    /// copies of it (delegates without a name) share them.
    fn has_mcp(&self) -> bool {
        !self.cfg.spec.mcp.is_empty()
    }

    fn offers(&self, tool: &str) -> bool {
        self.cfg.spec.tools.iter().any(|t| t == tool)
            || (self.has_mcp() && self.tree.mcp.offers(tool))
    }

    /// Steps until an answer or a limit.
    async fn drive(&self, st: &mut State) -> Result<(Option<String>, Stop)> {
        let mut defs = self.defs();
        defs.push(def(FINAL, &[]));
        loop {
            let step = st.steps.last().map_or(0, |s| s.step) + 1;
            if step > self.cfg.spec.max_steps {
                return Ok((None, Stop::MaxSteps));
            }
            let mut ens = self.cfg.ensemble.clone();
            let per_sample = self.tree.left() / ens.agents().len().max(1);
            if per_sample == 0 {
                return Ok((None, Stop::MaxTokens));
            }
            ens.max_tokens = ens.max_tokens.min(per_sample);
            ens.token_budget = Some(self.tree.left());
            // Every reply is one call, under the grammar: free text let the 0.5B model write
            // calls outside the tags the lazy grammar waits for, and repeat them until the
            // step's tokens ran out. Small models also call a tool again after its result
            // (cf. d6ea8a7), so after a repeated call, and on the last step, comes an answer
            // turn: only `final_answer` may be called, after a nudge. (A turn without tools
            // had the 0.5B model write the call's JSON again as its answer.)
            // A repeat of a call that failed is no sign the model knows the answer: it is
            // stuck, and greedy decoding would write the same call again. That step is drawn
            // again warmer instead of ending in an answer turn.
            let (repeated, stuck) = match st.steps.last() {
                Some(s) => {
                    let earlier = |c: &CallTrace| {
                        let id = c.by.strip_prefix(REPEAT)?;
                        st.steps.iter().flat_map(|s| &s.calls).find(|e| e.id == id)
                    };
                    let repeats: Vec<&CallTrace> = s.calls.iter().filter_map(earlier).collect();
                    let stuck = !repeats.is_empty() && repeats.iter().all(|e| e.ok == Some(false));
                    (!repeats.is_empty() && !stuck, stuck)
                }
                None => (false, false),
            };
            // Still stuck after WARM_DRAWS tries: the answer turn, as for other repeats.
            let (repeated, stuck) = if stuck && st.warm_draws >= WARM_DRAWS {
                (true, false)
            } else {
                (repeated, stuck)
            };
            if stuck {
                st.warm_draws += 1;
                ens = warmer(&ens, step);
                st.notes.push(format!(
                    "step {step} was drawn at temperature {WARM} (the last call repeated one that \
                     had failed)"
                ));
            }
            let answer_turn = repeated || step == self.cfg.spec.max_steps;
            let tools = Tools {
                defs: defs.clone(),
                choice: if answer_turn {
                    Choice::Named(FINAL.into())
                } else {
                    Choice::Required
                },
                parallel: false,
            };
            let mut messages = st.messages.clone();
            if answer_turn {
                messages.push(Message::new("user", NUDGE));
                st.notes.push(format!(
                    "step {step} was an answer turn ({})",
                    if repeated {
                        "the last call repeated an earlier one"
                    } else {
                        "the step limit"
                    }
                ));
            }
            let mut ask = Ask::conversation(messages, defs.clone());
            ask.parallel = false;
            ask.constraint = Some(tools.constraint());
            let started = Instant::now();
            let span = spans::step(step);
            let model_step = self.model_step(step, &ens, &ask);
            let Some(t) = model_step.instrument(span.clone()).await? else {
                return Ok((None, Stop::Timeout));
            };
            let usage = Usage::of(&t);
            self.tree
                .spent
                .fetch_add(usage.completion_tokens, Ordering::SeqCst);
            st.usage += usage;
            let text = calls::parse(&t.text, &[]).content;
            let calls = t.calls.clone();
            self.log(Event::Step {
                step,
                text: text.clone(),
                calls: calls.clone(),
                usage,
            })?;
            st.steps.push(StepTrace {
                step,
                text: text.clone(),
                calls: Vec::new(),
                usage,
                seconds: 0.0,
                ensemble: Some(t),
            });
            // The answer: a call of `final_answer`, or (a reply cut off before its call was
            // whole) the text.
            let answer = match calls.first() {
                Some(c) if c.name == FINAL => Some(final_text(c)),
                None => Some(text.clone()),
                Some(_) => None,
            };
            if let Some(answer) = answer {
                let s = st.steps.last_mut().expect("pushed above");
                s.seconds = started.elapsed().as_secs_f64();
                self.progress(s);
                return Ok((Some(answer), Stop::Answer));
            }
            st.messages.push(Message {
                tool_calls: calls.clone(),
                ..Message::new("assistant", &text)
            });
            let done = self.answer_calls(step, &calls, st).instrument(span).await?;
            let s = st.steps.last_mut().expect("pushed above");
            s.calls = done;
            s.seconds = started.elapsed().as_secs_f64();
            self.progress(s);
        }
    }

    fn progress(&self, s: &StepTrace) {
        if !self.tree.opts.progress {
            return;
        }
        let what = if s.calls.is_empty() {
            "answer".to_string()
        } else {
            let names: Vec<String> = s
                .calls
                .iter()
                .map(|c| match c.decision {
                    Decision::Deny if c.by.starts_with(REPEAT) => format!("{} (repeat)", c.name),
                    Decision::Deny => format!("{} (denied)", c.name),
                    _ => c.name.clone(),
                })
                .collect();
            names.join(", ")
        };
        eprintln!(
            "{}step {}: {what} · {} prompt ({} cached) + {} completion tokens · {:.1} s",
            "  ".repeat(self.depth),
            s.step,
            s.usage.prompt_tokens,
            s.usage.cached_tokens,
            s.usage.completion_tokens,
            s.seconds
        );
    }

    /// One model call, retried with backoff; None when the deadline passed.
    async fn model_step(
        &self,
        step: usize,
        ens: &crate::ensemble::Ensemble,
        ask: &Ask,
    ) -> Result<Option<Trace>> {
        for attempt in 1..=ATTEMPTS {
            let left = self.tree.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut runner = Runner::new(self.tree.engine.clone());
            match tokio::time::timeout(left, runner.run(ens, ask.clone())).await {
                Err(_) => return Ok(None),
                Ok(Ok(t)) => return Ok(Some(t)),
                Ok(Err(e)) => {
                    self.log(Event::Error {
                        step,
                        message: format!("{e:#}"),
                        attempt,
                    })?;
                    if attempt == ATTEMPTS {
                        return Err(e).with_context(|| {
                            format!("step {step}: the model failed {ATTEMPTS} times")
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Decides on, runs and answers each call; appends the tool messages.
    pub(super) async fn answer_calls(
        &self,
        step: usize,
        calls: &[ToolCall],
        st: &mut State,
    ) -> Result<Vec<CallTrace>> {
        let mut out = Vec::new();
        for call in calls {
            let span = spans::tool_call(call);
            let answered = self.answer_call(step, call, st);
            let c = answered.instrument(span.clone()).await?;
            spans::tool_done(&span, &c);
            st.messages.push(tool_message(&call.id, &c.output));
            out.push(c);
        }
        Ok(out)
    }

    async fn answer_call(&self, step: usize, call: &ToolCall, st: &mut State) -> Result<CallTrace> {
        let mut trace = CallTrace {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            decision: Decision::Deny,
            by: String::new(),
            ok: None,
            output: String::new(),
            seconds: 0.0,
            delegate: None,
        };
        if !self.offers(&call.name) {
            trace.by = UNKNOWN.into();
            trace.output = not_run(UNKNOWN, call, self.cfg, &st.steps);
            self.log(Event::Decision {
                step,
                call_id: call.id.clone(),
                tool: call.name.clone(),
                decision: Decision::Deny,
                by: trace.by.clone(),
            })?;
            return Ok(trace);
        }
        let ruling = self.cfg.policy.decide(&call.name, &call.arguments);
        let (decision, by) = match repeat_of(call, st) {
            Some(id) => {
                st.notes.push(format!(
                    "step {step}: {} repeats {id} and was not run",
                    call.id
                ));
                (Decision::Deny, format!("{REPEAT}{id}"))
            }
            None => self.authorize(step, call, &ruling).await?,
        };
        self.log(Event::Decision {
            step,
            call_id: call.id.clone(),
            tool: call.name.clone(),
            decision,
            by: by.clone(),
        })?;
        trace.decision = decision;
        trace.by = by.clone();
        if decision != Decision::Allow {
            trace.output = not_run(&by, call, self.cfg, &st.steps);
            return Ok(trace);
        }
        self.log(Event::Call {
            step,
            call_id: call.id.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
        })?;
        let started = Instant::now();
        let (done, sub, usage) = if call.name == "delegate" {
            self.delegate(call, st).await?
        } else if self.tree.mcp.offers(&call.name) {
            (
                self.tree.mcp.call(&call.name, &call.arguments).await,
                None,
                None,
            )
        } else {
            let tb = Toolbox::new(self.tree.workspace.clone(), self.cfg.spec.tool_timeout_s);
            (tb.call(&call.name, &call.arguments).await, None, None)
        };
        trace.seconds = started.elapsed().as_secs_f64();
        trace.ok = Some(done.ok);
        trace.output = bound(&done.output);
        self.log(Event::Result {
            step,
            call_id: call.id.clone(),
            tool: call.name.clone(),
            ok: done.ok,
            output: trace.output.clone(),
            seconds: trace.seconds,
            trace: sub.clone(),
            usage,
        })?;
        trace.delegate = sub;
        Ok(trace)
    }

    /// The policy's decision, or the user's where it says ask.
    async fn authorize(
        &self,
        step: usize,
        call: &ToolCall,
        r: &Ruling,
    ) -> Result<(Decision, String)> {
        if r.decision != Decision::Ask {
            return Ok((r.decision, r.by()));
        }
        let rule = r.rule.expect("ask comes from a rule");
        let key = (self.cfg.name().to_string(), rule);
        if self.tree.always.lock().expect("lock").contains(&key) {
            return Ok((Decision::Allow, format!("user (always, {})", r.by())));
        }
        if !self.tree.opts.interactive {
            return Ok((
                Decision::Deny,
                format!("{} (ask: nobody to answer)", r.by()),
            ));
        }
        let question = format!(
            "step {step}: {} wants to call {} with {}\n{} says ask. Allow? [y]es / [n]o / [a]lways for this run: ",
            self.cfg.name(),
            call.name,
            call.arguments,
            r.by()
        );
        let answer = tokio::task::spawn_blocking(move || ask_tty(&question)).await??;
        Ok(match answer {
            'y' => (Decision::Allow, "user".into()),
            'a' => {
                self.tree.always.lock().expect("lock").insert(key);
                (Decision::Allow, "user (always)".into())
            }
            _ => (Decision::Deny, "user".into()),
        })
    }

    /// A sub-run of the named delegate (or a copy of this agent) one level deeper.
    async fn delegate(
        &self,
        call: &ToolCall,
        st: &mut State,
    ) -> Result<(Done, Option<serde_json::Value>, Option<Usage>)> {
        let fail = |output: String| Ok((Done { ok: false, output }, None, None));
        let Some(task) = call.arguments.get("task").and_then(|t| t.as_str()) else {
            return fail(format!(
                "error: delegate needs a string argument `task`; the call gave {}",
                call.arguments
            ));
        };
        let cfg = match call.arguments.get("agent").and_then(|a| a.as_str()) {
            None | Some("") => self.cfg,
            Some(name) => match self.cfg.delegates.get(name) {
                Some(c) => c,
                None => {
                    let known: Vec<&String> = self.cfg.delegates.keys().collect();
                    return fail(format!(
                        "error: no helper agent `{name}` (known: {known:?})"
                    ));
                }
            },
        };
        if self.depth + 1 > self.tree.max_depth {
            st.notes.push(format!(
                "a delegate call was refused at depth {}: the depth limit is {}",
                self.depth + 1,
                self.tree.max_depth
            ));
            return fail(format!(
                "error: depth limit: helpers may nest {} deep; do this sub-task yourself",
                self.tree.max_depth
            ));
        }
        if cfg.spec.ensemble.is_some() && !std::ptr::eq(cfg, self.cfg) {
            return self.ask_ensemble(cfg, task, st).await;
        }
        let sub = Agent {
            tree: self.tree,
            cfg,
            depth: self.depth + 1,
            journal: None,
        };
        let task = Task::Text(task.to_string());
        let mut sub_state = State::new(task.text(), task.messages(cfg));
        let span = spans::agent_run(cfg.name(), sub.depth);
        let sub_run = sub.drive_boxed(&mut sub_state).instrument(span.clone());
        let (answer, stop) = sub_run.await?;
        let t = sub.trace(sub_state, answer.clone(), stop);
        spans::agent_ended(&span, &t);
        st.usage += t.usage;
        let done = match answer {
            Some(a) => Done {
                ok: true,
                output: a,
            },
            None => Done {
                ok: false,
                output: format!("error: the helper stopped at {stop} without an answer"),
            },
        };
        Ok((done, Some(serde_json::to_value(&t)?), Some(t.usage)))
    }

    /// A delegate entry with `ensemble`: that ensemble answers the sub-task once.
    async fn ask_ensemble(
        &self,
        cfg: &AgentConfig,
        task: &str,
        st: &mut State,
    ) -> Result<(Done, Option<serde_json::Value>, Option<Usage>)> {
        let mut ens = cfg.ensemble.clone();
        ens.token_budget = Some(self.tree.left());
        let left = self.tree.deadline.saturating_duration_since(Instant::now());
        let mut runner = Runner::new(self.tree.engine.clone());
        let t = match tokio::time::timeout(left, runner.run(&ens, task)).await {
            Err(_) => {
                return Ok((
                    Done {
                        ok: false,
                        output: "error: the run's time ran out".into(),
                    },
                    None,
                    None,
                ))
            }
            Ok(t) => t?,
        };
        let usage = Usage::of(&t);
        self.tree
            .spent
            .fetch_add(usage.completion_tokens, Ordering::SeqCst);
        st.usage += usage;
        let output = t.answer.clone().unwrap_or_else(|| t.text.clone());
        Ok((
            Done { ok: true, output },
            Some(serde_json::to_value(&t)?),
            Some(usage),
        ))
    }

    /// `drive` boxed: a delegate's sub-run recurses into it.
    fn drive_boxed<'b>(
        &'b self,
        st: &'b mut State,
    ) -> Pin<Box<dyn Future<Output = Result<Ended>> + Send + 'b>> {
        Box::pin(self.drive(st))
    }
}

/// The tool message answering call `id`.
pub(super) fn tool_message(id: &str, output: &str) -> Message {
    Message {
        tool_call_id: Some(id.to_string()),
        ..Message::new("tool", output)
    }
}

/// A `final_answer` call's answer: its `answer` argument (a string, or other JSON as text).
pub(super) fn final_text(c: &ToolCall) -> String {
    match c.arguments.get("answer") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// The user turn that opens an answer turn.
const NUDGE: &str = "Give your final answer now.";

/// The `by` of a call of a tool the agent does not have.
const UNKNOWN: &str = "unknown tool";

/// The `by` of a call that repeats an earlier one that ran (followed by that one's id).
const REPEAT: &str = "repeat of ";

/// The temperature a step is drawn at after the model repeated a failed call.
const WARM: f32 = 0.7;

/// Warmer draws a run may take before a stuck model gets the answer turn.
const WARM_DRAWS: usize = 2;

/// `ens` with its agents drawing at [`WARM`] at least, seeded by the step, so that a stuck
/// greedy agent writes something else.
fn warmer(ens: &crate::ensemble::Ensemble, step: usize) -> crate::ensemble::Ensemble {
    let mut ens = ens.clone();
    for m in &mut ens.members {
        if let crate::ensemble::Member::Agent(a) = m {
            a.sampling.temperature = a.sampling.temperature.max(WARM);
            a.sampling.seed = a.sampling.seed.wrapping_add(step as u64);
        }
    }
    ens
}

/// The id of an earlier call of this run with the same name and arguments that ran.
fn repeat_of(call: &ToolCall, st: &State) -> Option<String> {
    let key = call.canonical();
    st.steps
        .iter()
        .flat_map(|s| &s.calls)
        .find(|c| c.ok.is_some() && ToolCall::new(&c.name, c.arguments.clone()).canonical() == key)
        .map(|c| c.id.clone())
}

/// What the model is told of a call that did not run, from its decision's `by` (so that a
/// resumed run tells the model the same).
pub(super) fn not_run(by: &str, call: &ToolCall, cfg: &AgentConfig, steps: &[StepTrace]) -> String {
    if let Some(id) = by.strip_prefix(REPEAT) {
        let Some(earlier) = steps.iter().flat_map(|s| &s.calls).find(|c| c.id == id) else {
            return "already called; its result is above.".into();
        };
        if earlier.ok == Some(false) {
            return format!(
                "not run: this exact call already failed with: {}\nDo not repeat it: change the \
                 code or the arguments.",
                earlier.output
            );
        }
        return format!("already called; its result was: {}", earlier.output);
    }
    if by == UNKNOWN {
        return format!(
            "error: there is no tool `{}`; the tools are: {}",
            call.name,
            cfg.spec.tools.join(", ")
        );
    }
    format!(
        "denied by {by}: this call was not run. Do not retry it; answer without it or try \
         another way."
    )
}

/// `s` cut to [`MAX_OUTPUT_BYTES`] (on a character boundary), saying so.
fn bound(s: &str) -> String {
    if s.len() <= MAX_OUTPUT_BYTES {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[output cut at {end} of {} bytes]", &s[..end], s.len())
}

/// Asks on the terminal (stderr, /dev/tty) until the answer is y, n or a.
fn ask_tty(question: &str) -> Result<char> {
    use std::io::{BufRead, Write};
    let tty = std::fs::File::open("/dev/tty").context("cannot open /dev/tty to ask")?;
    let mut lines = std::io::BufReader::new(tty).lines();
    loop {
        eprint!("{question}");
        std::io::stderr().flush().ok();
        let Some(line) = lines.next() else {
            return Ok('n');
        };
        match line?.trim().to_lowercase().chars().next() {
            Some(c @ ('y' | 'n' | 'a')) => return Ok(c),
            _ => eprintln!("answer y, n or a"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_outputs_are_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_OUTPUT_BYTES);
        let b = bound(&s);
        assert!(
            b.ends_with(&format!("of {} bytes]", s.len())),
            "{}",
            &b[b.len() - 40..]
        );
        assert!(b.len() < s.len());
        assert_eq!(bound("short"), "short");
    }
}
