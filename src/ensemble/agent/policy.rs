//! What an agent may do: `[[agent.policy]]` rules over tool names and argument patterns.
//! The first rule that matches a call decides; a call no rule matches is allowed (the tool is
//! listed in `tools`, which is the first grant).
//!
//! Argument patterns are globs on the argument's text (a string, or a number's or bool's
//! JSON), matched by the small matcher below rather than a glob crate: `*` is any run of
//! characters but `/`, `**` any run including `/`, `?` one character but `/`. Character
//! classes and alternatives (`[ab]`, `{a,b}`) are refused at load, so a pattern never means
//! something other than what it looks like.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Ask,
    Deny,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Allow => "allow",
            Decision::Ask => "ask",
            Decision::Deny => "deny",
        })
    }
}

/// One `[[agent.policy]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A tool name or `*`.
    pub tool: String,
    /// A glob per argument; all must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    pub decision: Decision,
}

impl Rule {
    fn matches(&self, tool: &str, args: &Value) -> bool {
        (self.tool == "*" || self.tool == tool)
            && self.args.iter().all(|(k, pat)| match args.get(k) {
                Some(Value::String(s)) => glob(pat, s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => glob(pat, &v.to_string()),
                _ => false,
            })
    }
}

/// The rules, checked.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// A decision and what made it: "policy rule N" (1-based) or "default".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    pub decision: Decision,
    /// Index of the rule that matched.
    pub rule: Option<usize>,
}

impl Ruling {
    pub fn by(&self) -> String {
        match self.rule {
            Some(i) => format!("policy rule {}", i + 1),
            None => "default".into(),
        }
    }
}

impl Policy {
    /// Checks every pattern.
    pub fn new(rules: Vec<Rule>) -> Result<Self> {
        for (i, r) in rules.iter().enumerate() {
            for (arg, pat) in &r.args {
                if let Some(c) = pat.chars().find(|c| "[]{}".contains(*c)) {
                    bail!(
                        "policy rule {} ({}): the pattern `{pat}` for `{arg}` uses `{c}`; only \
                         `*`, `**` and `?` are supported",
                        i + 1,
                        r.tool
                    );
                }
                if pat.contains("***") {
                    bail!(
                        "policy rule {} ({}): the pattern `{pat}` for `{arg}` has `***`; write \
                         `**` (any path) or `*` (within one directory)",
                        i + 1,
                        r.tool
                    );
                }
            }
        }
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first matching rule's decision, or allow.
    pub fn decide(&self, tool: &str, args: &Value) -> Ruling {
        match self.rules.iter().position(|r| r.matches(tool, args)) {
            Some(i) => Ruling {
                decision: self.rules[i].decision,
                rule: Some(i),
            },
            None => Ruling {
                decision: Decision::Allow,
                rule: None,
            },
        }
    }

    /// Fails on the first `ask` rule: nobody can answer it here.
    pub fn check_unattended(&self) -> Result<()> {
        if let Some(i) = self.rules.iter().position(|r| r.decision == Decision::Ask) {
            bail!(
                "policy rule {} ({}) says ask, but nobody can answer here: write allow or deny",
                i + 1,
                self.rules[i].tool
            );
        }
        Ok(())
    }
}

/// Whether `text` matches `pat` (see the module comment).
pub fn glob(pat: &str, text: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            // `**/` also matches no directory at all (`out/**/x` matches `out/x`).
            let rest = &p[2..];
            if rest.first() == Some(&'/') && glob_at(&rest[1..], t) {
                return true;
            }
            (0..=t.len()).any(|i| glob_at(rest, &t[i..]))
        }
        Some('*') => {
            let rest = &p[1..];
            for i in 0..=t.len() {
                if glob_at(rest, &t[i..]) {
                    return true;
                }
                if t.get(i) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Some('?') => t.first().is_some_and(|&c| c != '/') && glob_at(&p[1..], &t[1..]),
        Some(&c) => t.first() == Some(&c) && glob_at(&p[1..], &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(tool: &str, args: &[(&str, &str)], decision: Decision) -> Rule {
        Rule {
            tool: tool.into(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            decision,
        }
    }

    #[test]
    fn globs_keep_single_stars_within_a_directory() {
        assert!(glob("out/**", "out/a/b.txt"));
        assert!(glob("out/**", "out/x"));
        assert!(!glob("out/**", "outside/x"));
        assert!(glob("out/*.txt", "out/a.txt"));
        assert!(!glob("out/*.txt", "out/a/b.txt"));
        assert!(glob("**/*.py", "a/b/c.py"));
        assert!(glob("**/*.py", "c.py"));
        assert!(glob("?.md", "a.md"));
        assert!(!glob("?.md", "/.md"));
        assert!(glob("*", "notes"));
        assert!(!glob("*", "a/b"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn the_first_matching_rule_wins_and_no_match_allows() {
        let p = Policy::new(vec![
            rule("write_file", &[("path", "out/**")], Decision::Allow),
            rule("write_file", &[], Decision::Deny),
            rule("*", &[("code", "*import os*")], Decision::Deny),
            rule("python", &[], Decision::Ask),
        ])
        .unwrap();
        let d = |tool: &str, args: Value| {
            let r = p.decide(tool, &args);
            (r.decision, r.by())
        };
        assert_eq!(
            d("write_file", json!({"path": "out/a.txt", "content": "x"})),
            (Decision::Allow, "policy rule 1".into())
        );
        assert_eq!(
            d("write_file", json!({"path": "secret.txt", "content": "x"})),
            (Decision::Deny, "policy rule 2".into())
        );
        // A missing argument does not match a pattern on it.
        assert_eq!(
            d("write_file", json!({"content": "x"})),
            (Decision::Deny, "policy rule 2".into())
        );
        // `*` names every tool.
        assert_eq!(
            d("python", json!({"code": "import os; os.remove('x')"})),
            (Decision::Deny, "policy rule 3".into())
        );
        assert_eq!(
            d("python", json!({"code": "print(1)"})),
            (Decision::Ask, "policy rule 4".into())
        );
        assert_eq!(
            d("calculator", json!({"expression": "1+1"})),
            (Decision::Allow, "default".into())
        );
        // Numbers match by their JSON text.
        let n = Policy::new(vec![rule("f", &[("n", "4?")], Decision::Deny)]).unwrap();
        assert_eq!(n.decide("f", &json!({"n": 42})).decision, Decision::Deny);
        assert_eq!(n.decide("f", &json!({"n": 5})).decision, Decision::Allow);
    }

    #[test]
    fn classes_and_triple_stars_are_refused() {
        for pat in ["out/[ab]*", "{a,b}", "out/***"] {
            let e = Policy::new(vec![rule("write_file", &[("path", pat)], Decision::Allow)]);
            let e = format!("{:#}", e.unwrap_err());
            assert!(e.contains(pat) && e.contains("policy rule 1"), "{e}");
        }
    }
}
