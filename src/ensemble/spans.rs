//! `invoke_agent {name}` spans of ensembles and their agents (GenAI semantic conventions,
//! "Invoke agent internal span", semantic-conventions v1.41.0
//! docs/gen-ai/gen-ai-agent-spans.md), with the decision as `conclave.*` attributes, which
//! the conventions have no names for. See [`crate::telemetry`] for when they are built.
use super::config::{Agent, Ensemble};
use super::trace::{AgentTrace, Trace};
use crate::telemetry::TARGET;
use anyhow::Result;
use tracing::field::Empty;
use tracing::Span;

/// An ensemble's span, under the current span (the parent ensemble's, for a nested one).
pub(super) fn ensemble(ens: &Ensemble) -> Span {
    tracing::info_span!(
        target: TARGET,
        "invoke_agent",
        otel.name = format!("invoke_agent {}", ens.name),
        otel.status_code = Empty,
        gen_ai.operation.name = "invoke_agent",
        gen_ai.provider.name = "conclave",
        gen_ai.agent.name = ens.name.as_str(),
        conclave.kind = "ensemble",
        conclave.strategy = ens.strategy.to_string(),
        conclave.votes = Empty,
        conclave.agreement = Empty,
        conclave.winner = Empty,
        conclave.answer = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        conclave.cached_tokens = Empty,
        "error.type" = Empty,
    )
}

/// Records the decision (votes as a JSON object of answer → weight) and the ensemble's
/// usage, which is its trace's `usage` (a job's prompt counted once, however many agents
/// shared it).
pub(super) fn decided(span: &Span, trace: &Result<Trace>) {
    if span.is_disabled() {
        return;
    }
    match trace {
        Ok(t) => {
            let votes = serde_json::to_string(&t.votes).unwrap_or_default();
            span.record("conclave.votes", votes);
            span.record("conclave.agreement", t.agreement);
            if let Some(w) = t.winner {
                span.record("conclave.winner", w as i64);
            }
            if let Some(a) = &t.answer {
                span.record("conclave.answer", a.as_str());
            }
            span.record("gen_ai.usage.input_tokens", t.usage.prompt_tokens as i64);
            span.record(
                "gen_ai.usage.output_tokens",
                t.usage.completion_tokens as i64,
            );
            span.record("conclave.cached_tokens", t.usage.cached_tokens as i64);
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", format!("{e:#}"));
        }
    }
}

/// The span of agent `index` (of the ensemble's agents, nested ensembles not counted), under
/// the current span (its ensemble's); its engine job's `chat` span goes under it.
pub(super) fn agent(ens: &Ensemble, a: &Agent, index: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "invoke_agent",
        otel.name = format!("invoke_agent {}", a.role.name),
        otel.status_code = Empty,
        gen_ai.operation.name = "invoke_agent",
        gen_ai.provider.name = "conclave",
        gen_ai.agent.name = a.role.name.as_str(),
        gen_ai.agent.id = format!("{}#{index}", ens.name),
        gen_ai.request.model = a.model.as_str(),
        gen_ai.request.temperature = crate::telemetry::decimal(a.sampling.temperature),
        gen_ai.request.seed = i64::try_from(a.sampling.seed).ok(),
        conclave.kind = "agent",
        conclave.agent = index as i64,
        conclave.role = a.role.name.as_str(),
        conclave.remote = a.remote.as_ref().map(|r| r.url.as_str()),
        conclave.extracted = Empty,
        conclave.finish = Empty,
        gen_ai.usage.output_tokens = Empty,
        "error.type" = Empty,
    )
}

/// Records what the strategy sees of the agent: its extracted answer and tokens.
pub(super) fn answered(span: &Span, a: &AgentTrace) {
    if span.is_disabled() {
        return;
    }
    if let Some(x) = &a.extracted {
        span.record("conclave.extracted", x.as_str());
    }
    if let Some(f) = a.finish {
        span.record("conclave.finish", format!("{f:?}").to_lowercase());
    }
    span.record("gen_ai.usage.output_tokens", a.tokens as i64);
    if let Some(e) = &a.error {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", e.as_str());
    }
}

/// A `conclave agent` run (the top one at depth 0, a delegate's sub-run deeper), under the
/// current span: the run's, or the delegate call's for a sub-run.
pub(super) fn agent_run(name: &str, depth: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "invoke_agent",
        otel.name = format!("invoke_agent {name}"),
        otel.status_code = Empty,
        gen_ai.operation.name = "invoke_agent",
        gen_ai.provider.name = "conclave",
        gen_ai.agent.name = name,
        conclave.kind = "agent_run",
        conclave.depth = depth as i64,
        conclave.answer = Empty,
        conclave.stop = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        conclave.cached_tokens = Empty,
    )
}

/// Records how a run ended and its tree's tokens (its `RunTrace`'s `usage`).
pub(super) fn agent_ended(span: &Span, t: &super::agent::RunTrace) {
    if span.is_disabled() {
        return;
    }
    if let Some(a) = &t.answer {
        span.record("conclave.answer", a.as_str());
    }
    span.record("conclave.stop", t.stop.to_string());
    span.record("gen_ai.usage.input_tokens", t.usage.prompt_tokens as i64);
    span.record(
        "gen_ai.usage.output_tokens",
        t.usage.completion_tokens as i64,
    );
    span.record("conclave.cached_tokens", t.usage.cached_tokens as i64);
}

/// One step of an agent run: its model call (an ensemble's `invoke_agent`) and the tool calls
/// it made go under it.
pub(super) fn step(n: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "step",
        otel.name = format!("step {n}"),
        conclave.step = n as i64,
    )
}

/// An agent's tool call (GenAI "Execute tool span"): the policy's decision, then the tool run
/// (a sandbox run, or a delegate's sub-run, goes under it).
pub(super) fn tool_call(call: &crate::engine::ToolCall) -> Span {
    tracing::info_span!(
        target: TARGET,
        "execute_tool",
        otel.name = format!("execute_tool {}", call.name),
        otel.status_code = Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = call.name.as_str(),
        gen_ai.tool.call.id = call.id.as_str(),
        "gen_ai.tool.type" = "function",
        conclave.decision = Empty,
        conclave.by = Empty,
        conclave.ok = Empty,
    )
}

/// Records the decision on a call and whether it ran and succeeded.
pub(super) fn tool_done(span: &Span, c: &super::agent::CallTrace) {
    if span.is_disabled() {
        return;
    }
    span.record("conclave.decision", c.decision.to_string());
    span.record("conclave.by", c.by.as_str());
    if let Some(ok) = c.ok {
        span.record("conclave.ok", ok);
        if !ok {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The check of agent `index`'s answer by `tool` (exec-vote, refine): a GenAI "Execute tool
/// span" under the ensemble's, whether or not the check runs a program.
pub(super) fn check(tool: crate::tools::Tool, index: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "execute_tool",
        otel.name = format!("execute_tool {tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool.to_string(),
        "gen_ai.tool.type" = "extension",
        conclave.agent = index as i64,
        conclave.passed = Empty,
        conclave.behaviour = Empty,
    )
}

/// Records the verdict of a check.
pub(super) fn checked(span: &Span, v: &super::verify::Verdict) {
    span.record("conclave.passed", v.passed);
    if !v.behaviour.is_empty() {
        span.record("conclave.behaviour", v.behaviour.as_str());
    }
}
