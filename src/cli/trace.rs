//! `conclave trace show FILE`: the tree of a trace file in the terminal, for people without
//! a browser — agents, answers, votes, tool calls, tokens and time.
//!
//! The file is read as plain JSON rather than into the ensemble's own types: those are
//! written, never read back, and a trace from an older or newer conclave should still show
//! what it has (a missing field prints as `-`).
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// Print the tree of a trace file: agents, answers, votes, tool calls, tokens, time.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// A trace: from `conclave ask --trace F`, `conclave agent --trace F` (or a run's
    /// DIR/trace.json), or the body of the server's `GET /v1/conclave/traces/{id}`.
    pub file: PathBuf,
}

pub fn run(cmd: TraceCommand) -> Result<()> {
    match cmd {
        TraceCommand::Show(args) => show(&args.file),
    }
}

fn show(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read trace file {}", path.display()))?;
    // Colour only for a person at a terminal; https://no-color.org turns it off there too.
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let out = render(&text, Paint(colour)).with_context(|| {
        format!(
            "{} is not a conclave trace: expected the JSON of an ensemble trace (`conclave ask \
             --trace F`), an agent run trace (`conclave agent --trace F`, DIR/trace.json) or a \
             server trace (`GET /v1/conclave/traces/ID`)",
            path.display()
        )
    })?;
    print!("{out}");
    Ok(())
}

/// The tree of a trace's JSON text.
pub fn render(text: &str, paint: Paint) -> Result<String> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    let mut t = Tree {
        out: String::new(),
        paint,
    };
    // The server's stored trace wraps the ensemble's or agent's own.
    let inner = match (v.get("id"), v.get("trace")) {
        (Some(id), Some(inner)) if inner.is_object() => {
            let head = format!(
                "trace {} · {} · {} · created {}",
                id.as_str().unwrap_or("-"),
                str_of(&v, "kind"),
                str_of(&v, "model"),
                v.get("created").map_or("-".into(), |c| c.to_string())
            );
            t.line(0, &t.paint.bold(&head));
            inner
        }
        _ => &v,
    };
    if is_ensemble(inner) {
        t.ensemble(0, inner);
    } else if is_run(inner) {
        t.run(0, inner);
    } else {
        bail!("its top level has neither `strategy` and `agents` nor `steps` and `stop`");
    }
    Ok(t.out)
}

fn is_ensemble(v: &Value) -> bool {
    v.get("strategy").is_some() && v["agents"].is_array()
}

fn is_run(v: &Value) -> bool {
    v["steps"].is_array() && v.get("stop").is_some()
}

/// ANSI styles, or none.
#[derive(Debug, Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn green(self, s: &str) -> String {
        self.wrap("1;32", s)
    }
    fn red(self, s: &str) -> String {
        self.wrap("31", s)
    }
    fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }
}

struct Tree {
    out: String,
    paint: Paint,
}

impl Tree {
    fn line(&mut self, depth: usize, s: &str) {
        let _ = writeln!(self.out, "{:width$}{s}", "", width = depth * 2);
    }

    /// An ensemble: its head, its agents (earlier rounds first), the judge, votes, winner.
    fn ensemble(&mut self, depth: usize, e: &Value) {
        let answer = e["answer"]
            .as_str()
            .map_or("no answer".into(), |a| format!("answer {}", short(a, 60)));
        let head = format!(
            "ensemble {} · {} · {answer} · agreement {:.0}% · {} · {}",
            str_of(e, "name"),
            str_of(e, "strategy"),
            num(e, "agreement") * 100.0,
            tokens(&e["usage"]),
            secs(e),
        );
        self.line(depth, &self.paint.bold(&head));
        let rounds = e["rounds"].as_array().map_or(&[][..], |r| &r[..]);
        for (i, round) in rounds.iter().enumerate() {
            self.line(depth + 1, &format!("round {}", i + 1));
            for (j, a) in round.as_array().into_iter().flatten().enumerate() {
                self.agent(depth + 2, j, a, false);
            }
        }
        if !rounds.is_empty() {
            self.line(depth + 1, &format!("round {} (last)", rounds.len() + 1));
        }
        let d = depth + 1 + usize::from(!rounds.is_empty());
        let winner = e["winner"].as_u64().map(|w| w as usize);
        for (i, a) in e["agents"].as_array().into_iter().flatten().enumerate() {
            self.agent(d, i, a, winner == Some(i));
        }
        if let Some(j) = e.get("judge").filter(|j| j.is_object()) {
            let pick = j["pick"]
                .as_u64()
                .map_or("no readable pick".into(), |p| format!("picked #{}", p + 1));
            let said = format!(
                "judge {} · {pick} · {}",
                str_of(j, "model"),
                short(str_of(j, "text"), 60)
            );
            self.line(depth + 1, &said);
        }
        let votes: Vec<(&String, f64)> = e["votes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k, v.as_f64().unwrap_or(0.0)))
            .collect();
        if !votes.is_empty() {
            let mut sorted = votes;
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
            let shown: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{} = {v:.3}", short(k, 40)))
                .collect();
            self.line(depth + 1, &format!("votes: {}", shown.join(", ")));
        }
        match winner {
            Some(w) => {
                let won = format!(
                    "* winner #{}: {}",
                    w + 1,
                    short(e["answer"].as_str().unwrap_or("-"), 60)
                );
                self.line(depth + 1, &self.paint.green(&won));
            }
            None => self.line(depth + 1, "no winner"),
        }
        if let Some(tb) = e["tie_break"].as_str() {
            self.line(depth + 1, &format!("tie break: {tb}"));
        }
        self.notes(depth + 1, e);
    }

    /// One agent: `*` marks the winner; a nested ensemble follows, indented.
    fn agent(&mut self, depth: usize, i: usize, a: &Value, won: bool) {
        let mut s = format!(
            "{} #{} {} · {} · T {:.2} → {} · {} tokens · {}",
            if won { "*" } else { " " },
            i + 1,
            str_of(a, "model"),
            str_of(a, "role"),
            num(a, "temperature"),
            a["extracted"].as_str().map_or("-".into(), |x| short(x, 60)),
            a["tokens"].as_u64().unwrap_or(0),
            secs(a),
        );
        if let Some(f) = a["finish"].as_str() {
            let _ = write!(s, " · {f}");
        }
        // The confidence strategies' inputs: the mean token confidence and self-certainty.
        let conf: Vec<f64> = a["signals"]["confidence"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        if !conf.is_empty() {
            let mean = conf.iter().sum::<f64>() / conf.len() as f64;
            let _ = write!(s, " · confidence {mean:.2}");
        }
        if let Some(c) = a["signals"]["certainty"].as_f64() {
            let _ = write!(s, " · certainty {c:.2}");
        }
        if let Some(r) = a["remote"].as_str() {
            let _ = write!(s, " · remote {r}");
        }
        if let Some(v) = a.get("verdict").filter(|v| v.is_object()) {
            if v["passed"].as_bool() == Some(true) {
                s.push_str(" · passed");
            } else {
                let _ = write!(s, " · failed: {}", short(str_of(v, "feedback"), 60));
            }
        }
        // A program answer's run: the number is `extracted`; a failure says why.
        if let Some(p) = a.get("program").filter(|p| p.is_object()) {
            match p["status"].as_str() {
                Some("ok") if a["extracted"].is_string() => s.push_str(" · program ran"),
                Some(status) => {
                    let _ = write!(s, " · program {status}: {}", short(str_of(p, "reason"), 80));
                }
                None => s.push_str(" · no program"),
            }
        }
        let s = if won { self.paint.green(&s) } else { s };
        self.line(depth, &s);
        if let Some(err) = a["error"].as_str() {
            self.line(
                depth + 2,
                &self.paint.red(&format!("error: {}", short(err, 200))),
            );
        }
        if let Some(e) = a.get("ensemble").filter(|e| e.is_object()) {
            self.ensemble(depth + 2, e);
        }
    }

    /// An agent run: its steps and calls (delegates nested), its answer and why it stopped.
    fn run(&mut self, depth: usize, r: &Value) {
        let head = format!(
            "agent {} · task: {}",
            str_of(r, "agent"),
            short(str_of(r, "task"), 80)
        );
        self.line(depth, &self.paint.bold(&head));
        for step in r["steps"].as_array().into_iter().flatten() {
            let head = format!(
                "step {} · {} · {}",
                step["step"].as_u64().unwrap_or(0),
                tokens(&step["usage"]),
                secs(step)
            );
            self.line(depth + 1, &head);
            if let Some(text) = step["text"].as_str().filter(|t| !t.trim().is_empty()) {
                self.line(
                    depth + 2,
                    &self.paint.dim(&format!("text: {}", short(text, 80))),
                );
            }
            for call in step["calls"].as_array().into_iter().flatten() {
                self.call(depth + 2, call);
            }
            // A step decided by several agents shows how; one agent's step is its call.
            if let Some(e) = step.get("ensemble").filter(|e| is_ensemble(e)) {
                if e["agents"].as_array().is_some_and(|a| a.len() > 1) {
                    self.ensemble(depth + 2, e);
                }
            }
        }
        let answer = match r["answer"].as_str() {
            Some(a) => self.paint.green(&format!("answer: {}", short(a, 200))),
            None => "no answer".into(),
        };
        self.line(depth + 1, &answer);
        let steps = r["steps"].as_array().map_or(0, Vec::len);
        let tail = format!(
            "stop: {} after {steps} step(s) · total {} · {}",
            str_of(r, "stop"),
            tokens(&r["usage"]),
            secs(r)
        );
        self.line(depth + 1, &tail);
        self.notes(depth + 1, r);
    }

    /// A tool call: what was asked, the decision and who made it, how it went.
    fn call(&mut self, depth: usize, c: &Value) {
        let ran = match c["ok"].as_bool() {
            Some(true) => "ok".to_string(),
            Some(false) => self.paint.red("failed"),
            None => "not run".into(),
        };
        let s = format!(
            "call {} {} · {} by {} · {ran} · {} → {}",
            str_of(c, "name"),
            short(&c["arguments"].to_string(), 60),
            str_of(c, "decision"),
            str_of(c, "by"),
            secs(c),
            short(str_of(c, "output").lines().next().unwrap_or(""), 80),
        );
        self.line(depth, &s);
        if let Some(d) = c.get("delegate").filter(|d| is_run(d)) {
            self.run(depth + 2, d);
        }
    }

    fn notes(&mut self, depth: usize, v: &Value) {
        for n in v["notes"].as_array().into_iter().flatten() {
            self.line(
                depth,
                &self
                    .paint
                    .dim(&format!("note: {}", n.as_str().unwrap_or("-"))),
            );
        }
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

fn secs(v: &Value) -> String {
    format!("{:.2} s", num(v, "seconds"))
}

/// `usage` as `P prompt (C cached) + N completion tokens`.
fn tokens(u: &Value) -> String {
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    format!(
        "{} prompt ({} cached) + {} completion tokens",
        n("prompt_tokens"),
        n("cached_tokens"),
        n("completion_tokens")
    )
}

/// `s` on one line, cut to `max` characters with an ellipsis.
fn short(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
