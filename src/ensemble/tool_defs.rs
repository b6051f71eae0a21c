//! An OpenAI `tools` list in engine terms, checked the same way wherever one arrives: a
//! server request's `tools` and a `bench --task tools` item's.
use crate::engine::ToolDef;
use crate::wire;
use serde_json::{json, Value};

/// Why entry `index` of a `tools` list cannot be offered.
#[derive(Debug, Clone, PartialEq)]
pub struct BadTool {
    pub index: usize,
    pub message: String,
}

/// The functions of `tools`: each a `function`, its name valid and not given before, its
/// `parameters` a JSON Schema object (none: a function of no arguments).
pub fn tool_defs(tools: &[wire::Tool]) -> Result<Vec<ToolDef>, BadTool> {
    let mut defs: Vec<ToolDef> = Vec::new();
    for (index, t) in tools.iter().enumerate() {
        let bad = |message: String| BadTool { index, message };
        if t.kind != "function" {
            return Err(bad(format!(
                "tool type `{}` is not supported: use `function`",
                t.kind
            )));
        }
        let f = &t.function;
        check_name(&f.name).map_err(bad)?;
        if defs.iter().any(|d| d.name == f.name) {
            return Err(bad(format!("the function `{}` is given twice", f.name)));
        }
        let parameters = match &f.parameters {
            None => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(bad("`parameters` must be a JSON Schema object".into())),
        };
        defs.push(ToolDef {
            name: f.name.clone(),
            description: f.description.clone(),
            parameters,
        });
    }
    Ok(defs)
}

/// OpenAI's rule for function names: 1 to 64 of `[a-zA-Z0-9_-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the function name `{name}` is not valid: 1 to 64 letters, digits, `_` or `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(kind: &str, name: &str, parameters: Option<Value>) -> wire::Tool {
        serde_json::from_value(json!({
            "type": kind,
            "function": {"name": name, "parameters": parameters},
        }))
        .unwrap()
    }

    #[test]
    fn each_bad_entry_is_named_by_its_index() {
        let ok = tool("function", "get_weather", None);
        let defs = tool_defs(std::slice::from_ref(&ok)).unwrap();
        assert_eq!(defs[0].parameters["type"], "object");
        for (bad, says) in [
            (tool("retrieval", "f", None), "tool type `retrieval`"),
            (tool("function", "no spaces", None), "is not valid"),
            (tool("function", "get_weather", None), "given twice"),
            (
                tool("function", "g", Some(json!([1]))),
                "JSON Schema object",
            ),
        ] {
            let e = tool_defs(&[ok.clone(), bad]).unwrap_err();
            assert_eq!(e.index, 1);
            assert!(e.message.contains(says), "{e:?}");
        }
    }
}
