//! Tool calling in the crate's own terms: the functions a conversation offers and the calls an
//! assistant made. The chat template renders both; `ensemble::calls` reads calls out of a
//! completion's text. OpenAI's JSON shapes for them are in `crate::wire`.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A function a conversation offers the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The arguments' JSON Schema (an object schema); `{}` when the function takes none.
    #[serde(default)]
    pub parameters: Value,
}

/// A call the assistant made: a function's name and its arguments, parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// `call_` and random hex: unique enough that a client can match each result to its call.
    pub id: String,
    pub name: String,
    /// A JSON object.
    pub arguments: Value,
}

impl ToolCall {
    /// A call with a fresh id.
    pub fn new(name: &str, arguments: Value) -> Self {
        Self {
            id: format!("call_{:016x}", rand::random::<u64>()),
            name: name.to_string(),
            arguments,
        }
    }

    /// The call as one line of JSON with keys sorted at every depth, so two calls that mean
    /// the same compare equal (what a vote counts).
    pub fn canonical(&self) -> String {
        let v = serde_json::json!({"name": self.name, "arguments": self.arguments});
        canonical_json(&v)
    }
}

/// `v` serialized with the keys of every object sorted and no whitespace. Numbers compare by
/// value: an integral float within ±2^53 is written as an integer (`1.0`, `1e0` and `1` are
/// one value). A string never equals a number (`"5"` is not `5`).
pub fn canonical_json(v: &Value) -> String {
    sorted(v).to_string()
}

// serde_json keeps insertion order when any crate in the build enables its `preserve_order`
// feature, so the keys are sorted here rather than trusted to be.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        // 2^53: beyond it not every integer is a float, so such a float stays as written.
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => v.clone(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_key_order_and_spacing() {
        let a = ToolCall::new(
            "f",
            json!({"b": 1, "a": {"y": [1, {"d": 0, "c": 1}], "x": "s"}}),
        );
        let b: Value =
            serde_json::from_str(r#"{ "a" : { "x": "s", "y": [1, {"c": 1, "d": 0}] }, "b": 1 }"#)
                .unwrap();
        assert_eq!(a.canonical(), ToolCall::new("f", b).canonical());
        assert_eq!(
            a.canonical(),
            r#"{"arguments":{"a":{"x":"s","y":[1,{"c":1,"d":0}]},"b":1},"name":"f"}"#
        );
        assert_ne!(
            a.canonical(),
            ToolCall::new("g", a.arguments.clone()).canonical()
        );
        assert_ne!(a.id, ToolCall::new("f", json!({})).id);
    }
}
