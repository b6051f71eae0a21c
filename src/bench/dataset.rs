//! Benchmark datasets: JSONL files (optionally gzipped), one item a line.
//!
//! Every line must be a valid item for the task; a bad one stops the load with its file and
//! line number, so no item is ever skipped silently. Blank lines are not items.
use crate::engine::{Message, ToolCall, ToolDef};
use crate::ensemble::extract::{calls_ballot, extract, NO_CALL};
use crate::ensemble::tool_defs::tool_defs;
use crate::ensemble::AnswerKind;
use crate::wire::{ChatMessage, Tool};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// What kind of items a dataset holds, which decides the prompt and how answers are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// `{"question", "answer"}`, the gold number after `####` (the GSM8K file format).
    Gsm8k,
    /// `{"question", "choices": [..], "answer": "B"}`.
    Choice,
    /// `{"question", "answer"}`, exact match after normalisation.
    Text,
    /// HumanEval: `{"task_id", "prompt", "entry_point", "test"}`.
    Code,
    /// Function calling: `{"messages", "tools", "accepted": [call or "text", …]}`, a call
    /// being `{"name", "arguments"}` (or a list of them for parallel calls) and "text" a reply
    /// that calls nothing. Right when the reply's calls equal an accepted one's.
    Tools,
}

impl Task {
    /// How a reply's answer is read and compared.
    pub fn answer_kind(self) -> AnswerKind {
        match self {
            Task::Gsm8k => AnswerKind::Number,
            Task::Choice => AnswerKind::Choice,
            Task::Text => AnswerKind::Text,
            Task::Code => AnswerKind::Code,
            // The runner reads a reply's calls whenever tools are offered; a call is JSON.
            Task::Tools => AnswerKind::Json,
        }
    }

    /// Whether answers of `kind` can be scored on this task: its own kind, or for gsm8k also
    /// the number a program prints (`--answer program`).
    pub fn accepts(self, kind: AnswerKind) -> bool {
        kind == self.answer_kind() || (self == Task::Gsm8k && kind == AnswerKind::Program)
    }

    /// The role (configs/roles.toml) a `--model` run gives its agents.
    pub fn role(self) -> &'static str {
        match self {
            Task::Code => "programmer",
            // Roles ask for an "Answer:" line; a tools item's own conversation is sent instead.
            Task::Tools => "assistant",
            _ => "solver",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}

/// A HumanEval problem: the function's signature and docstring, and its tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub prompt: String,
    pub entry_point: String,
    pub test: String,
}

/// What a correct reply gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Gold {
    /// A normalised answer (as `extract` gives it), compared for equality.
    Answer(String),
    /// A program that must pass its tests.
    Code(Problem),
    /// The ballots (`extract::calls_ballot`) of the replies that count as right.
    Calls(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item's `id` / `task_id`, else its line number.
    pub id: String,
    /// What the model is asked: the task's instruction around the question.
    pub prompt: String,
    pub gold: Gold,
    /// A tools item's conversation, sent whole instead of `prompt` in a role's frame.
    pub chat: Option<Chat>,
    /// A gsm8k item's question asked for a program instead (`answer = "program"`): the
    /// prose prompt's "Answer:" line would pull the model away from writing one.
    pub program: Option<String>,
}

/// A conversation with the functions it offers (the dataset writes them in OpenAI's shapes).
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDef>,
}

/// One line as written; which fields a task needs is checked after parsing.
#[derive(Debug, Deserialize)]
struct Line {
    id: Option<serde_json::Value>,
    task_id: Option<String>,
    question: Option<String>,
    answer: Option<String>,
    choices: Option<Vec<String>>,
    prompt: Option<String>,
    entry_point: Option<String>,
    test: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    tools: Option<Vec<Tool>>,
    accepted: Option<Vec<Value>>,
}

/// Loads every item of `path` (`.jsonl`, or `.jsonl.gz`).
pub fn load(path: &Path, task: Task) -> Result<Vec<Item>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open dataset {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut items = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| format!("{at}: cannot read the line"))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = parse(&line, task, i + 1).map_err(|e| anyhow!("{at}: {e}"))?;
        if !ids.insert(item.id.clone()) {
            bail!(
                "{at}: the id `{}` is used twice; ids must be unique",
                item.id
            );
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("{}: the dataset has no items", path.display());
    }
    Ok(items)
}

/// One line as an item of `task`; the error says what the line lacks.
pub fn parse(text: &str, task: Task, line_no: usize) -> Result<Item> {
    let line: Line = serde_json::from_str(text)
        .map_err(|e| anyhow!("not a JSON object of the {task} format ({e})"))?;
    let need = |field: &Option<String>, name: &str| -> Result<String> {
        match field {
            Some(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(anyhow!(
                "missing or empty \"{name}\" (a {task} item needs {})",
                FIELDS[task as usize]
            )),
        }
    };
    let id = match (&line.id, &line.task_id) {
        (Some(serde_json::Value::String(s)), _) => s.clone(),
        (Some(v), _) => v.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => line_no.to_string(),
    };
    let mut program = None;
    let (prompt, gold) = match task {
        Task::Gsm8k => {
            let q = need(&line.question, "question")?;
            let a = need(&line.answer, "answer")?;
            program = Some(prompts::gsm8k_program(&q));
            (prompts::gsm8k(&q), Gold::Answer(gsm8k_gold(&a)?))
        }
        Task::Text => {
            let q = need(&line.question, "question")?;
            let a = need(&line.answer, "answer")?;
            let gold =
                extract(AnswerKind::Text, &a).ok_or_else(|| anyhow!("\"answer\" has no text"))?;
            (prompts::text(&q), Gold::Answer(gold))
        }
        Task::Choice => {
            let q = need(&line.question, "question")?;
            let a = need(&line.answer, "answer")?;
            let choices = line.choices.unwrap_or_default();
            if !(2..=5).contains(&choices.len()) {
                bail!(
                    "\"choices\" needs 2 to 5 options (answers are letters A-E), found {}",
                    choices.len()
                );
            }
            let letter = a.trim().to_ascii_uppercase();
            let last = (b'A' + choices.len() as u8 - 1) as char;
            let mut chars = letter.chars();
            let one = chars.next().filter(|_| chars.next().is_none());
            if !one.is_some_and(|c| ('A'..=last).contains(&c)) {
                bail!("\"answer\" must be one letter from A to {last}, found {a:?}");
            }
            (prompts::choice(&q, &choices), Gold::Answer(letter))
        }
        Task::Code => {
            let problem = Problem {
                prompt: need(&line.prompt, "prompt")?,
                entry_point: need(&line.entry_point, "entry_point")?,
                test: need(&line.test, "test")?,
            };
            (prompts::code(&problem.prompt), Gold::Code(problem))
        }
        Task::Tools => {
            let (chat, gold) = tools_item(line)?;
            let prompt = chat
                .messages
                .iter()
                .rev()
                .find(|m| m.role == "user" && !m.content.trim().is_empty())
                .map(|m| m.content.clone())
                .ok_or_else(|| anyhow!("\"messages\" needs a user message with text"))?;
            return Ok(Item {
                id,
                prompt,
                gold,
                chat: Some(chat),
                program: None,
            });
        }
    };
    Ok(Item {
        id,
        prompt,
        gold,
        program,
        chat: None,
    })
}

/// A tools line's conversation and the ballots of its accepted answers.
fn tools_item(line: Line) -> Result<(Chat, Gold)> {
    let need = |what: &str| anyhow!("missing \"{what}\" (a tools item needs {})", FIELDS[4]);
    let messages = line
        .messages
        .filter(|m| !m.is_empty())
        .ok_or_else(|| need("messages"))?;
    let tools = line
        .tools
        .filter(|t| !t.is_empty())
        .ok_or_else(|| need("tools"))?;
    let accepted = line
        .accepted
        .filter(|a| !a.is_empty())
        .ok_or_else(|| need("accepted"))?;
    let messages = messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(m).with_context(|| format!("\"messages\"[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let defs = tool_defs(&tools).map_err(|e| anyhow!("\"tools\"[{}]: {}", e.index, e.message))?;
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    let mut ballots = Vec::new();
    for (i, a) in accepted.iter().enumerate() {
        let calls: Vec<&Value> = match a {
            Value::String(s) if s == NO_CALL => Vec::new(),
            Value::Array(calls) if !calls.is_empty() => calls.iter().collect(),
            Value::Object(_) => vec![a],
            _ => bail!(
                "\"accepted\"[{i}] must be a call {{\"name\", \"arguments\"}}, a list of calls \
                 or \"{NO_CALL}\" (no call), found {a}"
            ),
        };
        let mut answer = Vec::new();
        for c in calls {
            let name = c["name"].as_str().filter(|n| names.contains(n));
            let (Some(name), Some(args)) = (name, c.get("arguments").filter(|v| v.is_object()))
            else {
                bail!(
                    "\"accepted\"[{i}]: {c} needs a \"name\" among the item's tools ({}) and \
                     \"arguments\", an object",
                    names.join(", ")
                );
            };
            answer.push(ToolCall::new(name, args.clone()));
        }
        ballots.push(calls_ballot(&answer));
    }
    let chat = Chat {
        messages,
        tools: defs,
    };
    Ok((chat, Gold::Calls(ballots)))
}

/// A dataset's message: a system, user or assistant turn of text. (Turns with tool calls or
/// results are what a conversation continues from, not what these items ask.)
fn message(m: &ChatMessage) -> Result<Message> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        r @ ("user" | "assistant") => r,
        r => bail!("role `{r}` is not supported in a dataset: use system, user or assistant"),
    };
    if m.tool_calls.is_some() || m.tool_call_id.is_some() {
        bail!("tool calls and results in the history are not supported in a dataset");
    }
    let text = match &m.content {
        None => String::new(),
        Some(c) => c
            .text()
            .map_err(|kind| anyhow!("content of type `{kind}`: only text is supported"))?,
    };
    Ok(Message::new(role, &text))
}

/// The fields each task's lines need, in `Task` order.
const FIELDS: [&str; 5] = [
    "\"question\" and \"answer\" with the number after ####",
    "\"question\", \"choices\" and \"answer\" (a letter)",
    "\"question\" and \"answer\"",
    "\"task_id\", \"prompt\", \"entry_point\" and \"test\"",
    "\"messages\", \"tools\" and \"accepted\" (calls {\"name\", \"arguments\"} or \"text\")",
];

/// The number after the last `####`, commas stripped, normalised as replies' answers are.
fn gsm8k_gold(answer: &str) -> Result<String> {
    let (_, after) = answer
        .rsplit_once("####")
        .ok_or_else(|| anyhow!("\"answer\" has no `####` before the final number"))?;
    let plain = after.replace(',', "");
    extract(AnswerKind::Number, &format!("#### {plain}"))
        .ok_or_else(|| anyhow!("no number after `####` in \"answer\""))
}

/// The instruction each task wraps its question in. The answer formats are ones
/// `ensemble::extract` reads ("Answer: …", the first fenced code block). No placeholder
/// like "<number>": small models copy it verbatim.
pub mod prompts {
    pub fn gsm8k(question: &str) -> String {
        format!(
            "Solve this math word problem. Think step by step. On the last line write \
             'Answer:' followed by the final number.\n\nProblem: {question}"
        )
    }

    /// The question for program answers: what the `pal` role asks for, said again where
    /// the prose prompt asks for an "Answer:" line.
    pub fn gsm8k_program(question: &str) -> String {
        format!(
            "Write a short Python program that solves this math word problem and prints the \
             final number.\n\nProblem: {question}"
        )
    }

    pub fn choice(question: &str, choices: &[String]) -> String {
        let mut p = format!("{question}\n\n");
        for (i, c) in choices.iter().enumerate() {
            p.push_str(&format!("{}. {}\n", (b'A' + i as u8) as char, c.trim()));
        }
        p.push_str("\nChoose one option. On the last line write 'Answer:' followed by its letter.");
        p
    }

    pub fn text(question: &str) -> String {
        format!("{question}\n\nOn the last line write 'Answer:' followed by a short final answer.")
    }

    pub fn code(prompt: &str) -> String {
        format!(
            "Complete this Python function. Reply with the whole function, and the imports it \
             needs, in one ```python code block.\n\n```python\n{}\n```",
            prompt.trim_end()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, task: Task) -> String {
        format!("{:#}", parse(text, task, 1).unwrap_err())
    }

    #[test]
    fn gsm8k_gold_is_the_number_after_the_marker() {
        let a = r#####"{"question": "q", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}"#####;
        let item = parse(a, Task::Gsm8k, 4).unwrap();
        assert_eq!(item.gold, Gold::Answer("1007".into()));
        assert_eq!(item.id, "4");
        assert!(item.prompt.contains("Problem: q"));
        // Asked for a program, the question asks for no "Answer:" line.
        let program = item.program.as_deref().unwrap();
        assert!(program.contains("Python program") && program.ends_with("Problem: q"));
        assert!(!program.contains("Answer:"));
        assert!(err(r#####"{"question": "q", "answer": "7"}"#####, Task::Gsm8k).contains("####"));
        assert!(err(
            r#####"{"question": "q", "answer": "#### ?"}"#####,
            Task::Gsm8k
        )
        .contains("no number"));
        assert!(err(r#####"{"answer": "#### 1"}"#####, Task::Gsm8k).contains("\"question\""));
        assert!(err("[1, 2]", Task::Gsm8k).contains("not a JSON object"));
    }

    #[test]
    fn choice_answers_must_be_a_listed_letter() {
        let ok = r#"{"id": 9, "question": "q", "choices": ["x", "y", "z"], "answer": "c"}"#;
        let item = parse(ok, Task::Choice, 1).unwrap();
        assert_eq!(
            (item.id.as_str(), item.gold),
            ("9", Gold::Answer("C".into()))
        );
        assert!(item.prompt.contains("B. y\nC. z"));
        let d = r#"{"question": "q", "choices": ["x", "y", "z"], "answer": "D"}"#;
        assert!(err(d, Task::Choice).contains("A to C"));
        let one = r#"{"question": "q", "choices": ["x"], "answer": "A"}"#;
        assert!(err(one, Task::Choice).contains("2 to 5"));
    }

    #[test]
    fn text_and_code_items() {
        let t = parse(r#"{"question": "q", "answer": " Paris. "}"#, Task::Text, 1).unwrap();
        assert_eq!(t.gold, Gold::Answer("paris".into()));
        let c = r#"{"task_id": "T/0", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c): pass"}"#;
        let item = parse(c, Task::Code, 1).unwrap();
        assert_eq!(item.id, "T/0");
        assert!(matches!(item.gold, Gold::Code(ref p) if p.entry_point == "f"));
        let no_test = r#"{"task_id": "T/0", "prompt": "def f():\n", "entry_point": "f"}"#;
        assert!(err(no_test, Task::Code).contains("\"test\""));
    }

    #[test]
    fn tools_items_read_their_accepted_calls() {
        let line = r#"{"id": "w", "messages": [{"role": "user", "content": "Paris weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
            "accepted": [{"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}},
                         [{"name": "get_weather", "arguments": {"city": "Paris"}},
                          {"name": "get_weather", "arguments": {"city": "Rome"}}],
                         "text"]}"#;
        let item = parse(&line.replace('\n', " "), Task::Tools, 1).unwrap();
        assert_eq!(item.prompt, "Paris weather?");
        let chat = item.chat.unwrap();
        assert_eq!((chat.messages.len(), chat.tools.len()), (1, 1));
        let Gold::Calls(ballots) = item.gold else {
            panic!("a tools item's gold is its calls")
        };
        assert_eq!(
            ballots[0],
            r#"{"arguments":{"city":"Paris","unit":"c"},"name":"get_weather"}"#
        );
        assert!(ballots[1].starts_with('[') && ballots[1].contains("Rome"));
        assert_eq!(ballots[2], NO_CALL);
    }

    #[test]
    fn the_tools_datasets_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dev = load(&root.join("benches/data/tools-dev.jsonl"), Task::Tools).unwrap();
        assert!(dev.len() >= 80, "{} items", dev.len());
        let no_call = |i: &Item| matches!(&i.gold, Gold::Calls(c) if c == &[NO_CALL]);
        assert!(dev.iter().any(no_call));
        let sample = load(&root.join("tests/data/tools_sample.jsonl"), Task::Tools).unwrap();
        assert_eq!(sample.len(), 6);
    }

    #[test]
    fn tools_items_say_what_is_wrong() {
        let base = r#"{"messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "accepted": ACC}"#
            .replace('\n', " ");
        let bad = |acc: &str| err(&base.replace("ACC", acc), Task::Tools);
        assert!(bad(r#"[{"name": "g", "arguments": {}}]"#).contains("among the item's tools (f)"));
        assert!(bad(r#"[{"name": "f", "arguments": "{}"}]"#).contains("an object"));
        assert!(bad(r#"["none"]"#).contains("\"text\" (no call)"));
        assert!(bad("[]").contains("missing \"accepted\""));
        let no_tools = r#"{"messages": [{"role": "user", "content": "q"}], "accepted": ["text"]}"#;
        assert!(err(no_tools, Task::Tools).contains("missing \"tools\""));
        let bad_tool = base.replace(
            r#"{"type": "function", "function": {"name": "f"}}"#,
            r#"{"type": "retrieval", "function": {"name": "f"}}"#,
        );
        assert!(err(&bad_tool.replace("ACC", "[\"text\"]"), Task::Tools).contains("\"tools\"[0]"));
        let no_user = base.replace("user", "system").replace("ACC", "[\"text\"]");
        assert!(err(&no_user, Task::Tools).contains("user message"));
    }

    #[test]
    fn tasks_parse_by_name() {
        use clap::ValueEnum;
        assert_eq!(Task::from_str("GSM8K", true), Ok(Task::Gsm8k));
        assert_eq!(Task::Code.to_string(), "code");
        for t in Task::value_variants() {
            assert_eq!(serde_json::to_value(t).unwrap(), t.to_string());
        }
    }
}
