//! `POST /v1/responses` through the official `openai` Python client (`client.responses.create`),
//! on real models: text replies whole and streamed, `instructions`, function calls, ensembles,
//! and the 400s of input it cannot serve.
mod common;
use conclave::server::Options;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::OnceLock;

const SMALL: &str = "smollm2-135m";
const QWEN: &str = "qwen2.5-coder-0.5b";

/// One server in this process for every test, on a free loopback port.
fn url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let base = common::serve(Options {
            models: vec![SMALL.into(), QWEN.into()],
            ..Options::default()
        });
        format!("{base}/v1")
    })
}

/// Runs `code` in Python with `client`, an `openai.OpenAI` for this server, and `show`, which
/// turns the client's objects into JSON; `code` leaves its result in `out`, returned here.
fn python(code: &str) -> Value {
    let script = format!(
        "import json, os, openai\n\
         client = openai.OpenAI(base_url=os.environ['CONCLAVE_URL'], api_key='none', \
         max_retries=0, timeout=600)\n\
         HELPFUL = 'You are a helpful assistant.'\n\
         def show(x):\n    return x.model_dump(mode='json') if hasattr(x, 'model_dump') else x\n\
         {code}\n\
         print('RESULT ' + json.dumps(out))\n"
    );
    let run = Command::new(common::python_with_openai())
        .arg("-c")
        .arg(&script)
        .env("CONCLAVE_URL", url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{script}\nfailed:\n{stdout}{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no result from:\n{script}\n{stdout}{stderr}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_text_reply_is_a_response_object_with_a_message() {
    let out = python(&format!(
        "r = client.responses.create(model='{SMALL}', input='What is the capital of France? Answer in one sentence.', \
         instructions=HELPFUL, max_output_tokens=16, temperature=0)\n\
         out = {{'r': show(r), 'text': r.output_text}}"
    ));
    let r = &out["r"];
    assert!(r["id"].as_str().unwrap().starts_with("resp_"), "{r}");
    assert_eq!(
        (r["object"].clone(), r["model"].clone()),
        (json!("response"), json!(SMALL))
    );
    assert!(
        ["completed", "incomplete"].contains(&r["status"].as_str().unwrap()),
        "{r}"
    );
    let item = &r["output"][0];
    assert_eq!(
        (item["type"].clone(), item["role"].clone()),
        (json!("message"), json!("assistant"))
    );
    assert_eq!(item["content"][0]["type"], "output_text");
    assert!(out["text"].as_str().unwrap().contains("Paris"), "{out}");
    let u = &r["usage"];
    assert!(u["input_tokens"].as_u64().unwrap() > 5, "{u}");
    assert!(
        (1..=16).contains(&u["output_tokens"].as_u64().unwrap()),
        "{u}"
    );
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap() + u["output_tokens"].as_u64().unwrap())
    );
    // The same question as a list of message items with input_text parts.
    let out = python(&format!(
        "r = client.responses.create(model='{SMALL}', max_output_tokens=16, temperature=0, \
         instructions=HELPFUL, input=[{{'role': 'user', 'content': [{{'type': 'input_text', \
         'text': 'What is the capital of France? Answer in one sentence.'}}]}}])\n\
         out = r.output_text"
    ));
    assert!(out.as_str().unwrap().contains("Paris"), "{out}");
}

/// The event types of a stream in order, each type once where it repeats.
fn kinds(events: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for e in events {
        let k = e["type"].as_str().unwrap().to_string();
        if kinds.last() != Some(&k) {
            kinds.push(k);
        }
    }
    kinds
}

#[test]
fn streamed_text_reassembles_to_the_whole_reply_for_the_same_seed() {
    let out = python(&format!(
        "args = dict(model='{SMALL}', input='Tell me about the sea.', max_output_tokens=40, \
         temperature=0.9, extra_body={{'seed': 11}})\n\
         whole = client.responses.create(**args)\n\
         events = [show(e) for e in client.responses.create(stream=True, **args)]\n\
         out = {{'whole': show(whole), 'text': whole.output_text, 'events': events}}"
    ));
    let events = out["events"].as_array().unwrap();
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let last = if out["whole"]["status"] == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    assert_eq!(
        kinds(events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            last
        ]
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let text = out["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert_eq!(deltas, text);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done["text"], text);
    let fin = &events.last().unwrap()["response"];
    assert_eq!(fin["output"][0]["content"][0]["text"], text);
    assert_eq!(fin["usage"], out["whole"]["usage"]);
    assert_eq!(fin["status"], out["whole"]["status"]);
}

#[test]
fn instructions_reach_the_model() {
    let ask = |instructions: &str| {
        python(&format!(
            "r = client.responses.create(model='{SMALL}', input='What is the secret word?', \
             max_output_tokens=30, temperature=0{instructions})\n\
             out = {{'text': r.output_text, 'instructions': r.instructions}}"
        ))
    };
    let told = ask(
        ", instructions='The secret word is PINEAPPLE. When asked for the secret \
                   word, say it.'",
    );
    assert!(
        told["text"].as_str().unwrap().contains("PINEAPPLE"),
        "{told}"
    );
    assert!(told["instructions"]
        .as_str()
        .unwrap()
        .starts_with("The secret word"));
    let untold = ask("");
    assert!(
        !untold["text"].as_str().unwrap().contains("PINEAPPLE"),
        "{untold}"
    );
}

#[test]
fn an_ensemble_answers_whole_and_streamed() {
    let out = python(
        "args = dict(model='conclave/vote8', input='What is 2 + 3?', max_output_tokens=24)\n\
         whole = client.responses.create(**args)\n\
         events = [show(e) for e in client.responses.create(stream=True, **args)]\n\
         out = {'text': whole.output_text, 'whole': show(whole), 'events': events}",
    );
    assert!(!out["text"].as_str().unwrap().is_empty(), "{out}");
    assert!(
        out["whole"]["conclave"].is_object(),
        "the trace: {}",
        out["whole"]
    );
    let events = out["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed", "{last}");
    assert!(last["response"]["conclave"].is_object(), "{last}");
    let streamed = &last["response"]["output"][0]["content"][0]["text"];
    assert!(!streamed.as_str().unwrap().is_empty(), "{last}");
}

#[test]
fn input_it_cannot_serve_is_a_400_naming_the_param() {
    let out = python(&format!(
        "cases = [\n\
           dict(input='x', previous_response_id='resp_1'),\n\
           dict(input='x', background=True),\n\
           dict(input='x', max_output_tokens=0),\n\
           dict(input='x', temperature=3),\n\
           dict(input=[{{'type': 'reasoning', 'summary': []}}]),\n\
           dict(input=[{{'role': 'user', 'content': 'hi'}}, {{'content': 'no role'}}]),\n\
           dict(input=[{{'role': 'user', 'content': [{{'type': 'input_image', \
         'image_url': 'http://x'}}]}}]),\n\
           dict(input='x', tools=[{{'type': 'web_search'}}]),\n\
           dict(input=[]),\n\
         ]\n\
         out = []\n\
         for c in cases:\n\
         \x20   try:\n\
         \x20       client.responses.create(model='{SMALL}', **c)\n\
         \x20       out.append(None)\n\
         \x20   except openai.BadRequestError as e:\n\
         \x20       out.append([e.status_code, e.param])"
    ));
    assert_eq!(
        out,
        json!([
            [400, "previous_response_id"],
            [400, "background"],
            [400, "max_output_tokens"],
            [400, "temperature"],
            [400, "input[0]"],
            [400, "input[1]"],
            [400, "input[0]"],
            [400, "tools[0]"],
            [400, "input"],
        ])
    );
}

/// A weather tool, the Responses API's flat function-tool shape.
const WEATHER: &str = "tools = [{'type': 'function', 'name': 'get_weather', \
    'description': 'Get the current weather in a city', 'strict': True, 'parameters': \
    {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city'], \
    'additionalProperties': False}}]\n";

#[test]
fn a_function_call_round_trip_on_qwen() {
    let out = python(&format!(
        "{WEATHER}\
         history = [{{'role': 'user', 'content': 'What is the weather in Paris right now?'}}]\n\
         args = dict(model='{QWEN}', tools=tools, tool_choice='required', \
         max_output_tokens=80, temperature=0.7, extra_body={{'seed': 3}})\n\
         first = client.responses.create(input=history, **args)\n\
         events = [show(e) for e in client.responses.create(input=history, stream=True, \
         **args)]\n\
         call = [o for o in first.output if o.type == 'function_call'][0]\n\
         history += first.output\n\
         history.append({{'type': 'function_call_output', 'call_id': call.call_id, \
         'output': json.dumps({{'city': 'Paris', 'temperature_c': 31, 'sky': 'sunny'}})}})\n\
         answer = client.responses.create(model='{QWEN}', input=history, tools=tools, \
         tool_choice='none', max_output_tokens=60, temperature=0)\n\
         out = {{'first': show(first), 'call': show(call), 'events': events, \
         'answer': show(answer), 'text': answer.output_text}}"
    ));
    let call = &out["call"];
    assert_eq!(call["name"], "get_weather", "{out}");
    assert!(call["call_id"].as_str().is_some_and(|c| !c.is_empty()));
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].as_str().unwrap().contains("Paris"), "{args}");
    // The streamed call is the same call, its arguments' deltas spelling them out.
    let events = out["events"].as_array().unwrap();
    let last = &events.last().unwrap()["response"];
    let streamed = last["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .unwrap_or_else(|| panic!("no call streamed: {last}"));
    assert_eq!(
        (&streamed["name"], &streamed["arguments"]),
        (&call["name"], &call["arguments"])
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, call["arguments"].as_str().unwrap());
    // Told the result (and to call nothing more), the model answers in text with it.
    let answer = &out["answer"];
    assert_eq!(answer["status"], "completed", "{answer}");
    assert!(
        answer["output"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["type"] == "message"),
        "{answer}"
    );
    let text = out["text"].as_str().unwrap();
    assert!(
        text.contains("31") || text.to_lowercase().contains("sunny"),
        "{text}"
    );
}
