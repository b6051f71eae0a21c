//! `POST /v1/responses`, translated to the chat path: the request becomes a chat request (the
//! `instructions` a system message, the input items messages), the chat endpoint answers it as
//! it answers any other (a model or a `conclave/<preset>`, whole or streamed), and its answer
//! becomes a response object or the Responses API's semantic stream events. One generation
//! path, so everything the chat endpoint does (admission, timeouts, ensembles, metrics,
//! cancelling when the client leaves) holds here too.
use super::errors::ApiError;
use crate::wire::responses::{
    Event, IncompleteDetails, Input, InputItem, ItemContent, OutputItem, OutputText, Response,
    ResponseError, ResponseUsage, ResponsesRequest, Status, StreamEvent, Tool,
};
use crate::wire::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Common, Content, FinishReason,
    FunctionCall, FunctionDef, FunctionDelta, FunctionName, NamedTool, StreamOptions,
    Tool as ChatTool, ToolCall, ToolCallDelta, ToolChoice, ToolMode,
};
use axum::body::Body;
use axum::response::sse::{self, Sse};
use axum::response::IntoResponse;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::convert::Infallible;

/// What the answer repeats of the request, and where each chat message came from (so that an
/// error the chat path names `messages[i]` names the input item instead).
#[derive(Debug, Clone)]
pub struct Asked {
    base: Response,
    stream: bool,
    /// Per chat message, the request field it came from.
    origins: Vec<String>,
}

/// The chat request that answers `req`.
pub fn to_chat(req: &ResponsesRequest) -> Result<(ChatRequest, Asked), ApiError> {
    refuse_unsupported(req)?;
    let mut messages = Vec::new();
    let mut origins = Vec::new();
    if let Some(i) = &req.instructions {
        messages.push(ChatMessage::text("system", i));
        origins.push("instructions".to_string());
    }
    match &req.input {
        Input::Text(t) => {
            messages.push(ChatMessage::text("user", t));
            origins.push("input".into());
        }
        Input::Items(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid(
                    Some("input"),
                    "input must hold at least one item",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let param = format!("input[{i}]");
                match message(item, &param)? {
                    Turn::Message(m) => {
                        messages.push(m);
                        origins.push(param);
                    }
                    // Calls made together are one assistant message, with its text if any.
                    Turn::Call(call) => match messages.last_mut() {
                        Some(m) if m.role == "assistant" => {
                            m.tool_calls.get_or_insert_with(Vec::new).push(call)
                        }
                        _ => {
                            messages.push(ChatMessage {
                                role: "assistant".into(),
                                content: None,
                                tool_calls: Some(vec![call]),
                                tool_call_id: None,
                            });
                            origins.push(param);
                        }
                    },
                }
            }
        }
    }
    if req.max_output_tokens == Some(0) {
        return Err(ApiError::invalid(
            Some("max_output_tokens"),
            "max_output_tokens must be at least 1",
        ));
    }
    let tools = req.tools.clone().unwrap_or_default();
    let chat_tools = tools
        .iter()
        .enumerate()
        .map(|(i, t)| chat_tool(t, i))
        .collect::<Result<Vec<_>, _>>()?;
    let chat_choice = req.tool_choice.as_ref().map(tool_choice).transpose()?;
    let tool_choice = req.tool_choice.clone().unwrap_or(json!("auto"));
    let chat = ChatRequest {
        messages,
        tools: (!chat_tools.is_empty()).then_some(chat_tools),
        tool_choice: chat_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        common: Common {
            model: req.model.clone(),
            temperature: req.temperature,
            top_p: req.top_p,
            max_completion_tokens: req.max_output_tokens,
            seed: req.seed,
            stream: req.stream,
            // The usage goes in `response.completed`.
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            response_format: response_format(req.text.as_ref())?
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| {
                    ApiError::invalid(
                        Some("text.format"),
                        format!("text.format is not valid: {e}"),
                    )
                })?,
            ensemble: req.ensemble.clone(),
            ..Common::default()
        },
        ..ChatRequest::default()
    };
    let base = Response {
        id: format!("resp_{:016x}", rand::random::<u64>()),
        object: "response".into(),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        model: req.model.clone(),
        status: Status::InProgress,
        output: Vec::new(),
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone(),
        max_output_tokens: req.max_output_tokens,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        previous_response_id: None,
        temperature: req.temperature,
        top_p: req.top_p,
        tool_choice,
        tools,
        usage: None,
        conclave: None,
    };
    let asked = Asked {
        base,
        stream: req.stream,
        origins,
    };
    Ok((chat, asked))
}

/// Fields whose meaning this server cannot keep: refused, naming them, rather than ignored.
fn refuse_unsupported(req: &ResponsesRequest) -> Result<(), ApiError> {
    let no_store = "this server stores no responses or conversations: send the whole \
                    conversation in `input` (earlier outputs as items) instead";
    if req.previous_response_id.is_some() {
        return Err(ApiError::invalid(Some("previous_response_id"), no_store));
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::invalid(Some("conversation"), no_store));
    }
    if req.background == Some(true) {
        return Err(ApiError::invalid(
            Some("background"),
            "background responses are not supported: leave `background` out and wait for \
             the answer, or stream it",
        ));
    }
    if req.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(ApiError::invalid(
            Some("prompt"),
            "stored prompt templates are not supported: send the text in `input`",
        ));
    }
    if req.top_logprobs.is_some_and(|n| n != 0) {
        return Err(ApiError::invalid(
            Some("top_logprobs"),
            "log-probabilities are served on /v1/chat/completions, not on /v1/responses",
        ));
    }
    Ok(())
}

/// What one input item adds to the conversation.
enum Turn {
    Message(ChatMessage),
    /// A call the assistant made earlier.
    Call(ToolCall),
}

/// One input item in chat terms.
fn message(item: &InputItem, param: &str) -> Result<Turn, ApiError> {
    let invalid = |msg: String| ApiError::invalid(Some(param), msg);
    let field = |v: &Option<String>, name: &str| {
        v.clone().ok_or_else(|| {
            let kind = item.kind.as_deref().unwrap_or("message");
            invalid(format!("a `{kind}` item needs `{name}`"))
        })
    };
    let text = |c: &Option<ItemContent>, name: &str| match c {
        Some(c) => c.text().map_err(|kind| {
            invalid(format!(
                "content part of type `{kind}` is not supported: only input_text (and \
                 output_text in assistant messages)"
            ))
        }),
        None => Err(invalid(format!("`{name}` is missing"))),
    };
    match item.kind.as_deref() {
        None | Some("message") => {
            let role = match item.role.as_deref() {
                Some(r @ ("user" | "system" | "developer" | "assistant")) => r,
                Some(other) => {
                    return Err(invalid(format!(
                        "role `{other}` is not supported: use user, system, developer or \
                         assistant (a function's result is a `function_call_output` item)"
                    )))
                }
                None => return Err(invalid("a message needs a `role`".into())),
            };
            let mut m = ChatMessage::text(role, &text(&item.content, "content")?);
            if role == "assistant" && matches!(&m.content, Some(Content::Text(t)) if t.is_empty()) {
                m.content = None;
            }
            Ok(Turn::Message(m))
        }
        Some("function_call") => Ok(Turn::Call(ToolCall {
            id: field(&item.call_id, "call_id")?,
            kind: "function".into(),
            function: FunctionCall {
                name: field(&item.name, "name")?,
                arguments: field(&item.arguments, "arguments")?,
            },
        })),
        Some("function_call_output") => Ok(Turn::Message(ChatMessage {
            tool_call_id: Some(field(&item.call_id, "call_id")?),
            ..ChatMessage::text("tool", &text(&item.output, "output")?)
        })),
        Some(other) => Err(invalid(format!(
            "items of type `{other}` are not supported: use message, function_call or \
             function_call_output"
        ))),
    }
}

/// `tool_choice` in chat terms: a mode, or `{"type": "function", "name": …}` (Responses put the
/// name where chat completions nest it under `function`).
fn tool_choice(v: &Value) -> Result<ToolChoice, ApiError> {
    if let Ok(mode) = serde_json::from_value::<ToolMode>(v.clone()) {
        return Ok(ToolChoice::Mode(mode));
    }
    match (
        v.get("type").and_then(Value::as_str),
        v.get("name").and_then(Value::as_str),
    ) {
        (Some("function"), Some(name)) => Ok(ToolChoice::Named(NamedTool {
            kind: "function".into(),
            function: FunctionName { name: name.into() },
        })),
        _ => Err(ApiError::invalid(
            Some("tool_choice"),
            "tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": …}",
        )),
    }
}

/// A Responses function tool in chat completions' nested shape.
fn chat_tool(t: &Tool, i: usize) -> Result<ChatTool, ApiError> {
    let param = format!("tools[{i}]");
    if t.kind != "function" {
        return Err(ApiError::invalid(
            Some(&param),
            format!(
                "tools of type `{}` are not supported: only `function`",
                t.kind
            ),
        ));
    }
    let Some(name) = &t.name else {
        return Err(ApiError::invalid(
            Some(&param),
            "a function tool needs a `name`",
        ));
    };
    Ok(ChatTool::function(FunctionDef {
        name: name.clone(),
        description: t.description.clone(),
        parameters: t.parameters.clone(),
        strict: t.strict,
    }))
}

/// `text.format` as a chat `response_format`: Responses flatten `json_schema`'s fields into the
/// format object, chat completions nest them under `json_schema`.
fn response_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = format.clone();
            if let Some(o) = schema.as_object_mut() {
                o.remove("type");
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ApiError::invalid(
            Some("text.format"),
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

/// An error of the chat path, naming the Responses request's field instead of the chat one.
fn renamed(mut e: ApiError, asked: &Asked) -> ApiError {
    let param = e.param.as_deref().map(|p| {
        if let Some(i) = p
            .strip_prefix("messages[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
        {
            return asked
                .origins
                .get(i)
                .cloned()
                .unwrap_or_else(|| "input".into());
        }
        match p {
            "messages" => "input".to_string(),
            "max_completion_tokens" | "max_tokens" => "max_output_tokens".into(),
            "response_format" => "text.format".into(),
            other => other.to_string(),
        }
    });
    e.param = param;
    e
}

/// The chat endpoint's answer (`reply`) as a Responses answer.
pub async fn answer(
    reply: Result<axum::response::Response, ApiError>,
    asked: Asked,
) -> Result<axum::response::Response, ApiError> {
    let reply = reply.map_err(|e| renamed(e, &asked))?;
    if asked.stream {
        return Ok(stream(reply.into_body(), asked));
    }
    let bytes = axum::body::to_bytes(reply.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::internal(&anyhow::Error::new(e)))?;
    let chat: ChatCompletion =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(&anyhow::Error::new(e)))?;
    Ok(axum::Json(whole(&chat, asked.base)).into_response())
}

/// A whole chat completion as a response object.
fn whole(chat: &ChatCompletion, mut r: Response) -> Response {
    let mut out = Output::default();
    if let Some(choice) = chat.choices.first() {
        let text = match &choice.message.content {
            Some(c) => c.text().unwrap_or_default(),
            None => String::new(),
        };
        out.text(&text);
        for (index, c) in choice.message.tool_calls.iter().flatten().enumerate() {
            out.call(&ToolCallDelta {
                index,
                id: Some(c.id.clone()),
                kind: Some(c.kind.clone()),
                function: Some(FunctionDelta {
                    name: Some(c.function.name.clone()),
                    arguments: Some(c.function.arguments.clone()),
                }),
            });
        }
        out.finish(choice.finish_reason);
    }
    r.usage = chat.usage.map(ResponseUsage::from);
    r.conclave = chat.conclave.clone();
    out.close(&mut r);
    r
}

/// A response's output as it is built, item by item: the message (whose text arrives in
/// pieces) and the function calls, in the order the model wrote them. One item is open at a
/// time; opening the next closes it.
#[derive(Debug, Default)]
struct Output {
    items: Vec<OutputItem>,
    /// Whether the last item is still being written.
    open: bool,
    /// The chat stream's index of the call being written.
    call: Option<usize>,
    finish: Option<FinishReason>,
}

impl Output {
    /// A piece of the reply's text: appended to the open message, or to a new one.
    fn text(&mut self, piece: &str) -> Vec<Event> {
        if piece.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        if !(self.open && matches!(self.items.last(), Some(OutputItem::Message { .. }))) {
            events.extend(self.close_open(Status::Completed));
            events.extend(self.open_message());
        }
        let output_index = self.items.len() - 1;
        let Some(OutputItem::Message { id, content, .. }) = self.items.last_mut() else {
            unreachable!("a message was opened above");
        };
        content[0].text.push_str(piece);
        events.push(Event::TextDelta {
            item_id: id.clone(),
            output_index,
            content_index: 0,
            delta: piece.to_string(),
            logprobs: Vec::new(),
        });
        events
    }

    /// A piece of a call: the first piece of the chat's call `index` opens a `function_call`
    /// item, the next ones add to its arguments.
    fn call(&mut self, d: &ToolCallDelta) -> Vec<Event> {
        let mut events = Vec::new();
        let f = d.function.clone().unwrap_or_default();
        if !(self.open && self.call == Some(d.index)) {
            events.extend(self.close_open(Status::Completed));
            let item = OutputItem::FunctionCall {
                id: format!("fc_{:016x}", rand::random::<u64>()),
                call_id: d
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("call_{:016x}", rand::random::<u64>())),
                name: f.name.unwrap_or_default(),
                arguments: String::new(),
                status: Status::InProgress,
            };
            events.push(Event::ItemAdded {
                output_index: self.items.len(),
                item: item.clone(),
            });
            self.items.push(item);
            self.open = true;
            self.call = Some(d.index);
        }
        if let Some(piece) = f.arguments.filter(|a| !a.is_empty()) {
            let output_index = self.items.len() - 1;
            let Some(OutputItem::FunctionCall { id, arguments, .. }) = self.items.last_mut() else {
                unreachable!("a call was opened above");
            };
            arguments.push_str(&piece);
            events.push(Event::ArgumentsDelta {
                item_id: id.clone(),
                output_index,
                delta: piece,
            });
        }
        events
    }

    fn open_message(&mut self) -> Vec<Event> {
        let id = format!("msg_{:016x}", rand::random::<u64>());
        let output_index = self.items.len();
        self.items.push(OutputItem::Message {
            id: id.clone(),
            role: "assistant".into(),
            status: Status::InProgress,
            content: vec![OutputText::new("")],
        });
        self.open = true;
        vec![
            Event::ItemAdded {
                output_index,
                // As OpenAI streams it: the message's parts follow in their own events.
                item: OutputItem::Message {
                    id: id.clone(),
                    role: "assistant".into(),
                    status: Status::InProgress,
                    content: Vec::new(),
                },
            },
            Event::PartAdded {
                item_id: id,
                output_index,
                content_index: 0,
                part: OutputText::new(""),
            },
        ]
    }

    /// Marks the open item done with `done` (`completed`, or `incomplete` when the output was
    /// cut at `max_output_tokens`): the events that say so.
    fn close_open(&mut self, done: Status) -> Vec<Event> {
        self.call = None;
        if !std::mem::take(&mut self.open) {
            return Vec::new();
        }
        let output_index = self.items.len() - 1;
        let item = self.items.last_mut().expect("an open item exists");
        let mut events = Vec::new();
        match item {
            OutputItem::Message {
                id,
                status,
                content,
                ..
            } => {
                *status = done;
                let text = content[0].text.clone();
                events.push(Event::TextDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    text,
                    logprobs: Vec::new(),
                });
                events.push(Event::PartDone {
                    item_id: id.clone(),
                    output_index,
                    content_index: 0,
                    part: content[0].clone(),
                });
            }
            OutputItem::FunctionCall {
                id,
                arguments,
                status,
                ..
            } => {
                *status = done;
                events.push(Event::ArgumentsDone {
                    item_id: id.clone(),
                    output_index,
                    arguments: arguments.clone(),
                });
            }
        }
        events.push(Event::ItemDone {
            output_index,
            item: item.clone(),
        });
        events
    }

    fn finish(&mut self, f: Option<FinishReason>) {
        if f.is_some() {
            self.finish = f;
        }
    }

    /// Closes the open item (after an empty message, when the model said nothing at all) and
    /// sets `r`'s output and status; the events that tell a stream so.
    fn close(&mut self, r: &mut Response) -> Vec<Event> {
        let mut events = Vec::new();
        if self.items.is_empty() {
            events.extend(self.open_message());
        }
        let cut = self.finish == Some(FinishReason::Length);
        events.extend(self.close_open(if cut {
            Status::Incomplete
        } else {
            Status::Completed
        }));
        if cut {
            r.status = Status::Incomplete;
            r.incomplete_details = Some(IncompleteDetails {
                reason: "max_output_tokens".into(),
            });
        } else {
            r.status = Status::Completed;
        }
        r.output = self.items.clone();
        events
    }
}

/// What one SSE event of the chat stream says.
enum ChatEvent {
    Chunk(Box<ChatChunk>),
    Error(crate::wire::ErrorBody),
    Done,
}

/// Splits a chat SSE body into its events' data. Holds the bytes of an event not yet whole.
#[derive(Default)]
struct SseReader {
    buf: Vec<u8>,
}

impl SseReader {
    fn push(&mut self, bytes: &[u8]) -> Vec<ChatEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                out.push(ChatEvent::Done);
            } else if let Ok(chunk) = serde_json::from_str::<ChatChunk>(&data) {
                out.push(ChatEvent::Chunk(Box::new(chunk)));
            } else if let Ok(err) = serde_json::from_str(&data) {
                out.push(ChatEvent::Error(err));
            }
        }
        out
    }
}

/// Turns chat chunks into the Responses events, numbering them.
struct Translator {
    response: Response,
    output: Output,
    seq: usize,
    ended: bool,
}

impl Translator {
    fn new(base: Response) -> Self {
        Self {
            response: base,
            output: Output::default(),
            seq: 0,
            ended: false,
        }
    }

    fn number(&mut self, events: Vec<Event>) -> Vec<StreamEvent> {
        events
            .into_iter()
            .map(|event| {
                let e = StreamEvent {
                    sequence_number: self.seq,
                    event,
                };
                self.seq += 1;
                e
            })
            .collect()
    }

    fn start(&mut self) -> Vec<StreamEvent> {
        let r = self.response.clone();
        self.number(vec![
            Event::Created {
                response: r.clone(),
            },
            Event::InProgress { response: r },
        ])
    }

    fn event(&mut self, e: ChatEvent) -> Vec<StreamEvent> {
        if self.ended {
            return Vec::new();
        }
        let events = match e {
            ChatEvent::Chunk(c) => {
                if let Some(u) = c.usage {
                    self.response.usage = Some(ResponseUsage::from(u));
                }
                if c.conclave.is_some() {
                    self.response.conclave = c.conclave.clone();
                }
                let mut events = Vec::new();
                for choice in &c.choices {
                    if let Some(t) = &choice.delta.content {
                        events.extend(self.output.text(t));
                    }
                    for d in choice.delta.tool_calls.iter().flatten() {
                        events.extend(self.output.call(d));
                    }
                    self.output.finish(choice.finish_reason);
                }
                events
            }
            ChatEvent::Error(body) => {
                self.ended = true;
                self.response.status = Status::Failed;
                self.response.error = Some(ResponseError {
                    code: "server_error".into(),
                    message: body.error.message.clone(),
                });
                vec![
                    Event::Error {
                        code: Some("server_error".into()),
                        message: body.error.message,
                        param: body.error.param,
                    },
                    Event::Failed {
                        response: self.response.clone(),
                    },
                ]
            }
            ChatEvent::Done => return self.end(),
        };
        self.number(events)
    }

    /// The items closed and the final response, once.
    fn end(&mut self) -> Vec<StreamEvent> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        let mut events = self.output.close(&mut self.response);
        let response = self.response.clone();
        events.push(match response.status {
            Status::Incomplete => Event::Incomplete { response },
            _ => Event::Completed { response },
        });
        self.number(events)
    }
}

/// The chat stream `body` as the Responses API's stream: `event: <type>` and
/// `data: {"type": <type>, "sequence_number": …, …}` per event, no `[DONE]` (OpenAI sends
/// none on this endpoint). Dropping it (a client that left) drops the chat stream, which
/// cancels the engine job.
fn stream(body: Body, asked: Asked) -> axum::response::Response {
    let mut t = Translator::new(asked.base);
    let first = t.start();
    let state = (body.into_data_stream(), SseReader::default(), t);
    let rest = futures_util::stream::unfold(Some(state), |state| async move {
        let (mut body, mut reader, mut t) = state?;
        match body.next().await {
            Some(Ok(bytes)) => {
                let events: Vec<StreamEvent> = reader
                    .push(&bytes)
                    .into_iter()
                    .flat_map(|e| t.event(e))
                    .collect();
                Some((events, Some((body, reader, t))))
            }
            // The chat stream ended (or broke): whatever is open is closed.
            _ => Some((t.end(), None)),
        }
    });
    let events = futures_util::stream::iter(first)
        .chain(rest.flat_map(futures_util::stream::iter))
        .map(|e| {
            // The wire types have string keys only: serializing cannot fail.
            let data = serde_json::to_string(&e).expect("a wire type serializes");
            Ok::<_, Infallible>(sse::Event::default().event(e.event.name()).data(data))
        });
    Sse::new(events).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(v: Value) -> ResponsesRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_function_call_round_trip_becomes_chat_messages_and_tools() {
        let req = request(json!({"model": "m", "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "get_weather", "description": "Weather now",
                       "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                 "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather",
                 "arguments": "{\"city\":\"Lyon\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"}]}));
        let (chat, asked) = to_chat(&req).unwrap();
        let v = serde_json::to_value(&chat).unwrap();
        assert_eq!(
            v["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function":
                        {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function":
                        {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
                {"role": "tool", "content": "18C", "tool_call_id": "call_1"}])
        );
        assert_eq!(
            v["tools"],
            json!([{"type": "function", "function": {"name": "get_weather",
                "description": "Weather now", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        // An error about the tool message names the item it came from.
        let e = renamed(ApiError::invalid(Some("messages[3]"), "x"), &asked);
        assert_eq!(e.param.as_deref(), Some("input[3]"));
    }

    #[test]
    fn text_format_becomes_the_chat_response_format() {
        let format = |f: Value| response_format(Some(&json!({"format": f})));
        let schema = json!({"type": "object"});
        assert_eq!(
            format(json!({"type": "json_schema", "name": "x", "schema": schema, "strict": true}))
                .unwrap(),
            Some(json!({"type": "json_schema",
                        "json_schema": {"name": "x", "schema": schema, "strict": true}}))
        );
        assert_eq!(format(json!({"type": "text"})).unwrap(), None);
        let e = format(json!({"type": "yaml"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("text.format"));
    }

    fn chat_completion(message: Value, finish: &str) -> ChatCompletion {
        serde_json::from_value(json!({"choices": [{"index": 0, "message": message,
            "finish_reason": finish}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}))
        .unwrap()
    }

    fn base() -> Response {
        to_chat(&request(json!({"model": "m", "input": "hi"})))
            .unwrap()
            .1
            .base
    }

    #[test]
    fn a_chat_answer_with_calls_becomes_function_call_items() {
        let chat = chat_completion(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_9",
                "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}),
            "tool_calls",
        );
        let r = serde_json::to_value(whole(&chat, base())).unwrap();
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"].as_array().unwrap().len(), 1, "{r}");
        let item = &r["output"][0];
        assert!(item["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(
            (
                &item["type"],
                &item["call_id"],
                &item["name"],
                &item["arguments"]
            ),
            (
                &json!("function_call"),
                &json!("call_9"),
                &json!("f"),
                &json!("{\"a\":1}")
            )
        );
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 8})
        );
        // Text cut at the limit: an incomplete message, and an incomplete response.
        let chat = chat_completion(json!({"role": "assistant", "content": "Par"}), "length");
        let r = serde_json::to_value(whole(&chat, base())).unwrap();
        assert_eq!(
            (&r["status"], &r["incomplete_details"]["reason"]),
            (&json!("incomplete"), &json!("max_output_tokens"))
        );
        assert_eq!(r["output"][0]["status"], "incomplete");
        assert_eq!(r["output"][0]["content"][0]["text"], "Par");
    }

    /// Feeds a chat SSE body, cut at awkward places, through the reader and the translator.
    fn translate(chunks: &[Value]) -> Vec<Value> {
        let mut body = String::new();
        for c in chunks {
            body.push_str(&format!("data: {c}\n\n"));
        }
        body.push_str("data: [DONE]\n\n");
        let mut reader = SseReader::default();
        let mut t = Translator::new(base());
        let mut events = t.start();
        for piece in body.as_bytes().chunks(7) {
            for e in reader.push(piece) {
                events.extend(t.event(e));
            }
        }
        events.extend(t.end());
        events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    #[test]
    fn streamed_text_then_a_call_become_two_items_in_order() {
        let events = translate(&[
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Let me "}), Value::Null),
            chunk(json!({"content": "look."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                       "function": {"name": "f", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}),
        ]);
        let seen: Vec<(String, Value)> = events
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["output_index"].clone(),
                )
            })
            .collect();
        let want = [
            ("response.created", Value::Null),
            ("response.in_progress", Value::Null),
            ("response.output_item.added", json!(0)),
            ("response.content_part.added", json!(0)),
            ("response.output_text.delta", json!(0)),
            ("response.output_text.delta", json!(0)),
            ("response.output_text.done", json!(0)),
            ("response.content_part.done", json!(0)),
            ("response.output_item.done", json!(0)),
            ("response.output_item.added", json!(1)),
            ("response.function_call_arguments.delta", json!(1)),
            ("response.function_call_arguments.delta", json!(1)),
            ("response.function_call_arguments.done", json!(1)),
            ("response.output_item.done", json!(1)),
            ("response.completed", Value::Null),
        ];
        let want: Vec<(String, Value)> = want.into_iter().map(|(k, i)| (k.into(), i)).collect();
        assert_eq!(seen, want);
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        let last = &events.last().unwrap()["response"];
        assert_eq!(last["output"][0]["content"][0]["text"], "Let me look.");
        assert_eq!(
            (
                &last["output"][1]["call_id"],
                &last["output"][1]["arguments"]
            ),
            (&json!("call_1"), &json!("{\"a\":1}"))
        );
        assert_eq!(events[13]["item"], last["output"][1]);
        assert_eq!(last["usage"]["total_tokens"], 10);
    }

    #[test]
    fn an_error_mid_stream_fails_the_response() {
        let events = translate(&[
            chunk(json!({"content": "Hel"}), Value::Null),
            json!({"error": {"message": "boom", "type": "server_error"}}),
        ]);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(&kinds[kinds.len() - 2..], ["error", "response.failed"]);
        let last = events.last().unwrap();
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["message"], "boom");
    }
}
