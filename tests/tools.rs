//! Tool calling on qwen2.5-coder-0.5b: its own chat template with `tools`, and the server's
//! `tools` / `tool_choice` / `tool_calls` through the official `openai` Python client.
mod common;

use candle_core::quantized::gguf_file::Content;
use conclave::engine::{ToolCall, ToolDef};
use conclave::model::chat::{ChatTemplate, Message, Piece};
use conclave::server::Options;
use serde_json::json;

const QWEN: &str = "qwen2.5-coder-0.5b";

fn template(name: &str) -> ChatTemplate {
    let path = common::model_path(name);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    let src = content.metadata["tokenizer.chat_template"]
        .to_string()
        .unwrap()
        .clone();
    ChatTemplate::new(Some(src), String::new(), String::new())
}

/// Qwen2.5's template renders a tool list, an assistant's call and a tool result exactly as
/// Hugging Face's `apply_chat_template` does. The expected text was made with Python's
/// jinja2 (3.1) from the GGUF's template, with `transformers`' environment (trim_blocks,
/// lstrip_blocks) and its `tojson` (`json.dumps(x, ensure_ascii=False)`).
#[test]
fn qwen_template_renders_tools_calls_and_results_as_transformers_does() {
    let tools = [ToolDef {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters: json!({"properties": {"city": {"type": "string"},
            "unit": {"enum": ["c", "f"], "type": "string"}}, "required": ["city"], "type": "object"}),
    }];
    let mut call = Message::new("assistant", "");
    call.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: json!({"city": "Paris", "unit": "c"}),
    }];
    let mut result = Message::new("tool", "18 C");
    result.tool_call_id = Some("call_1".into());
    let msgs = [Message::new("user", "Weather in Paris?"), call, result];
    let pieces = template(QWEN).render(&msgs, &tools, true).unwrap();
    let text: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Template(s) | Piece::Content(s) => s.as_str(),
        })
        .collect();
    let want = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Current weather in a city\", \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}, \"unit\": {\"enum\": [\"c\", \"f\"], \"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(text, want);
    assert!(pieces.contains(&Piece::Content("18 C".into())));
}

/// Starts `conclave serve` in this process on qwen2.5-coder-0.5b, keeping a prefix store of
/// `prefix_cache_mb` (as `serve --prefix-cache-mb`); returns its base URL.
fn server(prefix_cache_mb: usize) -> String {
    common::serve(Options {
        models: vec![QWEN.into()],
        // 100 requests on a shared machine can queue past the default 600 s.
        request_timeout: None,
        prefix_cache_mb,
        ..Options::default()
    })
}

/// tests/tools_client.py: a round trip, `required` on 100 prompts validated with
/// `jsonschema`, a named function, streamed calls against whole ones, and the 400s. The 100
/// prompts share the tools' system prompt, so they go to a server with a prefix store, as a
/// served agent API would run: each prefills only its own question (checked there through
/// `cached_tokens`). The rest go to one without, where a streamed reply and a whole one
/// both start cold and must match token for token.
#[test]
fn the_openai_client_calls_tools() {
    let url = server(0);
    let cached = server(256);
    let text = common::run_python(
        "tools_client.py",
        &[
            ("CONCLAVE_URL", format!("{url}/v1")),
            ("CONCLAVE_CACHED_URL", format!("{cached}/v1")),
        ],
    );
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
