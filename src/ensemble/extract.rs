//! Pulling a comparable answer out of an agent's free-form reply.
//!
//! Voting only works when equal answers compare equal as strings, so every extractor
//! also normalises: "1,000", "1000.0" and "$1000" all become "1000"; "(b)" becomes "B";
//! JSON is re-serialized with sorted keys.

use crate::engine::{canonical_json, ToolCall};
use std::fmt;

/// What shape of answer a task expects, which decides how replies are compared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AnswerKind {
    /// A numeric answer (GSM8K-style word problems).
    Number,
    /// A multiple-choice letter A–E.
    Choice,
    /// A short free-text answer.
    Text,
    /// The first fenced code block.
    Code,
    /// A JSON value: a ```json block, or the first object or array in the reply.
    Json,
    /// A number that the reply's Python program prints when the sandbox runs it (PAL; see
    /// `ensemble::program`). Reading the reply alone gives nothing: the runner runs it.
    Program,
}

impl fmt::Display for AnswerKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}

/// The normalized answer a text gives, or None when it gives none.
pub fn extract(kind: AnswerKind, text: &str) -> Option<String> {
    match kind {
        AnswerKind::Number => extract_number(text),
        AnswerKind::Choice => extract_choice(text),
        AnswerKind::Text => extract_text(text),
        AnswerKind::Code => extract_code(text),
        AnswerKind::Json => extract_json(text).map(|v| canonical_json(&v)),
        // The answer is what the program prints, which only running it tells
        // (`program::Programs::answers`).
        AnswerKind::Program => None,
    }
}

/// The answer a program printed: the last number in its output, normalized as
/// [`AnswerKind::Number`] answers are, so `10.0` and `10` equal the gold `10`. None when
/// it printed no number.
pub fn printed_number(stdout: &str) -> Option<String> {
    let last = stdout.split_whitespace().last()?;
    let last = last.trim_end_matches(|c: char| ".,;:)]}'\"".contains(c));
    // Python writes floats from 1e16 up (and below 1e-4) in exponent notation, which
    // `numbers` does not read ("1e+16" would be 16): such a last word is read as a float.
    if last.contains(['e', 'E']) {
        if let Ok(f) = last.parse::<f64>() {
            if f.is_finite() {
                return numbers(&format!("{f}")).pop();
            }
        }
    }
    numbers(stdout).pop().map(|n| round_float_noise(&n))
}

/// Python prints binary floating-point error (`0.1 * 3` is `0.30000000000000004`, `1.1 * 3`
/// is `3.3000000000000003`); a fraction of 12 digits or more is such noise, rounded to 9
/// places. No GSM8K answer has so many (its golds are integers, a few with two decimals).
fn round_float_noise(n: &str) -> String {
    let Some((_, frac)) = n.split_once('.') else {
        return n.to_string();
    };
    if frac.len() < 12 {
        return n.to_string();
    }
    match n.parse::<f64>() {
        Ok(f) => numbers(&format!("{f:.9}"))
            .pop()
            .unwrap_or_else(|| n.to_string()),
        Err(_) => n.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Numbers

/// Phrases after which a model states its final numeric answer.
const NUMBER_PHRASES: [&str; 3] = ["answer is", "answer:", "final answer"];

fn extract_number(text: &str) -> Option<String> {
    // GSM8K's own format wins: the reference solutions end in "#### N".
    if let Some(p) = text.rfind("####") {
        if let Some(n) = numbers(&text[p + 4..]).into_iter().next() {
            return Some(n);
        }
    }
    // MATH-style \boxed{...}; LaTeX writes thousands as "1{,}000".
    if let Some(inner) = last_boxed(text) {
        if let Some(n) = numbers(&inner.replace("{,}", ",")).into_iter().next() {
            return Some(n);
        }
    }
    // "... so the answer is 42." — the first number after the last such phrase.
    let lower = text.to_ascii_lowercase(); // ASCII lowering keeps byte offsets valid
    if let Some(end) = last_phrase_end(&lower, &NUMBER_PHRASES) {
        if let Some(n) = numbers(&text[end..]).into_iter().next() {
            return Some(n);
        }
    }
    numbers(text).pop()
}

/// Contents of the last `\boxed{...}`, honouring nested braces (`\boxed{\frac{1}{2}}`).
fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None // unclosed: the reply was probably cut off mid-answer
}

/// Byte offset just past the last occurrence of any phrase (`hay` must be lowercase).
fn last_phrase_end(hay: &str, phrases: &[&str]) -> Option<usize> {
    phrases
        .iter()
        .filter_map(|p| hay.rfind(p).map(|i| (i, i + p.len())))
        .max()
        .map(|(_, end)| end)
}

/// Every number in `s`, normalised, in order of appearance.
///
/// Accepts an optional sign (only when not glued to a preceding word or digit, so "3-4"
/// is 3 and 4), an optional "$" after the sign, "," thousands groups of exactly three
/// digits, and a decimal part. A trailing "." is sentence punctuation, not a decimal
/// point. "%" and other units are simply not part of the number. Exponents are not read.
fn numbers(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let glued = i > 0 && b[i - 1].is_ascii_alphanumeric();
        let mut j = i;
        let mut neg = false;
        if (b[j] == b'-' || b[j] == b'+') && !glued {
            neg = b[j] == b'-';
            j += 1;
            if b.get(j) == Some(&b'$') {
                j += 1;
            }
        }
        // A number starts with a digit, or with ".5"-style decimals not after a digit.
        let starts =
            digit(j) || (b.get(j) == Some(&b'.') && digit(j + 1) && !(j > 0 && digit(j - 1)));
        if !starts {
            i += 1;
            continue;
        }
        let mut int = String::new();
        while digit(j) {
            int.push(b[j] as char);
            j += 1;
            // "1,000": a comma followed by exactly three digits continues the number.
            if b.get(j) == Some(&b',') && (1..=3).all(|k| digit(j + k)) && !digit(j + 4) {
                j += 1;
            }
        }
        let mut frac = String::new();
        if b.get(j) == Some(&b'.') && digit(j + 1) {
            j += 1;
            while digit(j) {
                frac.push(b[j] as char);
                j += 1;
            }
        }
        out.push(normalize_number(neg, &int, &frac));
        i = j;
    }
    out
}

/// Canonical decimal form: no leading integer zeros, no trailing fraction zeros, no "-0".
fn normalize_number(neg: bool, int: &str, frac: &str) -> String {
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    let mut s = String::from(int);
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    if neg && s != "0" {
        s.insert(0, '-');
    }
    s
}

// ---------------------------------------------------------------------------
// Multiple choice

fn extract_choice(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    // Explicit patterns, last one wins: "answer is (B)", "Answer: B", "**B**".
    let mut best: Option<(usize, char)> = None;
    for phrase in ["answer is", "answer:"] {
        for (p, _) in lower.match_indices(phrase) {
            if let Some(c) = letter_after(b, &lower, p + phrase.len()) {
                best = best.max(Some((p, c)));
            }
        }
    }
    for (p, _) in text.match_indices("**") {
        if let Some(c) = bold_letter(b, p + 2) {
            best = best.max(Some((p, c)));
        }
    }
    best.map(|(_, c)| c)
        .or_else(|| trailing_letter(text))
        .map(String::from)
}

/// Choice letter A–E, uppercased. Lowercase is only trusted when formatted as a choice
/// ("(b)", "b)"), so the English article "a" is never read as option A.
fn choice_letter(c: u8, formatted: bool) -> Option<char> {
    match c {
        b'A'..=b'E' => Some(c as char),
        b'a'..=b'e' if formatted => Some(c.to_ascii_uppercase() as char),
        _ => None,
    }
}

/// A letter right after an answer phrase: skips ":", "*", spaces and an optional
/// "option"/"choice" word, then reads "B", "(B)", "[B]" or "B)". A bare letter must end
/// its word, so "The answer is Alice" gives nothing.
fn letter_after(b: &[u8], lower: &str, mut i: usize) -> Option<char> {
    let skip = |i: &mut usize| {
        while b.get(*i).is_some_and(|c| b" \t\r\n:*".contains(c)) {
            *i += 1;
        }
    };
    skip(&mut i);
    for word in ["option", "choice"] {
        if lower[i..].starts_with(word) {
            i += word.len();
            skip(&mut i);
        }
    }
    let open = matches!(b.get(i), Some(b'(' | b'['));
    if open {
        i += 1;
    }
    let close = matches!(b.get(i + 1), Some(b')' | b']'));
    if open && !close {
        return None;
    }
    if b.get(i + 1).is_some_and(u8::is_ascii_alphanumeric) {
        return None;
    }
    choice_letter(*b.get(i)?, close)
}

/// "**B**", "**(B)**", "**B)**" or "**B.**" starting just after the opening "**" at `i`.
fn bold_letter(b: &[u8], mut i: usize) -> Option<char> {
    let open = b.get(i) == Some(&b'(');
    if open {
        i += 1;
    }
    let letter = *b.get(i)?;
    i += 1;
    let close = b.get(i) == Some(&b')');
    if close || (!open && b.get(i) == Some(&b'.')) {
        i += 1;
    }
    if open && !close {
        return None;
    }
    if b.get(i..i + 2) != Some(b"**") {
        return None;
    }
    choice_letter(letter, close)
}

/// A lone choice token ending the text: "B", "B.", "(B)", "B)", "(B).".
fn trailing_letter(text: &str) -> Option<char> {
    let token = text.split_whitespace().last()?.trim_matches('*');
    let token = token.strip_suffix('.').unwrap_or(token);
    let (inner, formatted) = match token.strip_suffix(')') {
        Some(t) => (t.strip_prefix('(').unwrap_or(t), true),
        None => (token, false),
    };
    match inner.as_bytes() {
        [c] => choice_letter(*c, formatted),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Free text

fn extract_text(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    // After "Answer:" take the rest of that line (or the next non-empty one, for
    // "Final answer:\nParis"); otherwise a model's conclusion is its last line.
    let after = last_phrase_end(&lower, &["answer:", "answer is"])
        .and_then(|end| text[end..].lines().find(|l| !l.trim().is_empty()));
    let line = after.or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))?;
    normalize_text(line)
}

/// Lowercase, collapse whitespace, then peel surrounding quotes / bold markers and a
/// trailing period until nothing changes (`"Paris".` → `paris`).
fn normalize_text(s: &str) -> Option<String> {
    const PAIRS: [(char, char); 6] = [
        ('"', '"'),
        ('\'', '\''),
        ('“', '”'),
        ('‘', '’'),
        ('`', '`'),
        ('*', '*'),
    ];
    let joined = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let mut t = joined.as_str();
    loop {
        let before = t;
        t = t.trim();
        t = t.strip_suffix('.').unwrap_or(t);
        for (open, close) in PAIRS {
            if let Some(inner) = t.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
                t = inner;
            }
        }
        if t == before {
            break;
        }
    }
    (!t.is_empty()).then(|| t.to_string())
}

// ---------------------------------------------------------------------------
// Code

fn extract_code(text: &str) -> Option<String> {
    let text = text.replace("\r\n", "\n");
    let open = text.find("```")? + 3;
    let rest = &text[open..];
    // The opening line holds only the language tag ("```rust"); code starts below it.
    // An unclosed fence (reply cut off by the token limit) keeps everything after it.
    let body_end = rest.find("```").unwrap_or(rest.len());
    let body = match rest[..body_end].find('\n') {
        Some(nl) => &rest[nl + 1..body_end],
        None => &rest[..body_end], // "```x = 1```" on one line
    };
    let lines: Vec<&str> = body.lines().map(str::trim_end).collect();
    let first = lines.iter().position(|l| !l.is_empty())?;
    let last = lines.iter().rposition(|l| !l.is_empty())?;
    Some(lines[first..=last].join("\n"))
}

// ---------------------------------------------------------------------------
// JSON

/// The JSON value a reply gives: the whole reply when it is JSON (as a constrained reply
/// is), else the first fenced block that parses (```json or untagged), else the first object
/// or array in the text that parses. A model states its JSON first and explains after, so
/// the first wins; brace pairs that are not JSON (`{x}` in prose) are passed over.
pub fn extract_json(text: &str) -> Option<serde_json::Value> {
    if let Ok(v) = serde_json::from_str(text.trim()) {
        return Some(v);
    }
    let mut rest = text;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let Some(close) = after.find("```") else {
            break;
        };
        let block = &after[..close];
        // The opening line may hold a language tag ("json", "JSON", "jsonc").
        let body = match block.split_once('\n') {
            Some((tag, body)) if !tag.trim_start().starts_with(['{', '[']) => body,
            _ => block,
        };
        if let Ok(v) = serde_json::from_str(body.trim()) {
            return Some(v);
        }
        rest = &after[close + 3..];
    }
    for (i, c) in text.char_indices() {
        if c != '{' && c != '[' {
            continue;
        }
        let mut values = serde_json::Deserializer::from_str(&text[i..]).into_iter();
        if let Some(Ok(v)) = values.next() {
            return Some(v);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Tool calls

/// The ballot of a reply that calls no tool: all such replies vote together.
pub const NO_CALL: &str = "text";

/// A reply's calls as one ballot: a call is its [`ToolCall::canonical`] form, so calls with
/// equal names and equal arguments (see [`canonical_json`]) vote together; several calls are
/// the array of them, in the order written; no call is [`NO_CALL`].
pub fn calls_ballot(calls: &[ToolCall]) -> String {
    match calls {
        [] => NO_CALL.to_string(),
        [one] => one.canonical(),
        _ => format!(
            "[{}]",
            calls
                .iter()
                .map(ToolCall::canonical)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(t: &str) -> Option<String> {
        extract(AnswerKind::Number, t)
    }
    fn choice(t: &str) -> Option<String> {
        extract(AnswerKind::Choice, t)
    }
    fn text(t: &str) -> Option<String> {
        extract(AnswerKind::Text, t)
    }
    fn code(t: &str) -> Option<String> {
        extract(AnswerKind::Code, t)
    }
    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }
    fn json(t: &str) -> Option<String> {
        extract(AnswerKind::Json, t)
    }

    #[test]
    fn kind_parses_and_displays() {
        use clap::ValueEnum;
        assert_eq!(AnswerKind::from_str("number", true), Ok(AnswerKind::Number));
        assert_eq!(AnswerKind::from_str("Choice", true), Ok(AnswerKind::Choice));
        assert!(AnswerKind::from_str("essay", true).is_err());
        for k in AnswerKind::value_variants() {
            assert_eq!(serde_json::to_value(k).unwrap(), k.to_string());
        }
        assert_eq!(AnswerKind::Text.to_string(), "text");
        assert_eq!(
            serde_json::to_string(&AnswerKind::Code).unwrap(),
            "\"code\""
        );
        let k: AnswerKind = serde_json::from_str("\"number\"").unwrap();
        assert_eq!(k, AnswerKind::Number);
    }

    #[test]
    fn a_programs_answer_is_the_last_number_it_prints() {
        let p = printed_number;
        assert_eq!(p("42\n"), s("42"));
        assert_eq!(p("Total: 1,000.0 dollars\n"), s("1000"));
        assert_eq!(p("step 1: 3\nstep 2: 7\n7.50\n"), s("7.5"));
        assert_eq!(p("-3.0"), s("-3"));
        // What `extract(Number)` makes of the gold's "#### 18" is what a program's 18.0 gives.
        assert_eq!(p("18.0"), extract(AnswerKind::Number, "#### 18"));
        // Binary floating-point noise, and Python's exponent notation.
        assert_eq!(p("0.30000000000000004"), s("0.3"));
        assert_eq!(p("3.3000000000000003"), s("3.3"));
        assert_eq!(p("0.125"), s("0.125"));
        assert_eq!(p("1e+16"), s("10000000000000000"));
        assert_eq!(p("2.5e-05"), s("0.000025"));
        // No number: nothing, a word, Python's `None`, `nan`, `inf`.
        for out in ["", "  \n", "many", "None", "nan", "inf", "-inf"] {
            assert_eq!(p(out), None, "{out:?}");
        }
        // Reading a reply alone never answers for a program: it must run.
        assert_eq!(
            extract(AnswerKind::Program, "```python\nprint(4)\n```\n4"),
            None
        );
        assert_eq!(AnswerKind::Program.to_string(), "program");
    }

    #[test]
    fn number_normalisation() {
        assert_eq!(num("1,000"), s("1000"));
        assert_eq!(num("1000.0"), s("1000"));
        assert_eq!(num("1000.00"), s("1000"));
        assert_eq!(num("$1,000"), s("1000"));
        assert_eq!(num("0.50"), s("0.5"));
        assert_eq!(num(".5"), s("0.5"));
        assert_eq!(num("-3"), s("-3"));
        assert_eq!(num("-0.0"), s("0"));
        assert_eq!(num("007"), s("7"));
        assert_eq!(num("It costs -$5 now"), s("-5"));
        assert_eq!(num("a rise of 25%"), s("25"));
        assert_eq!(num("12,345,678 grains"), s("12345678"));
        assert_eq!(num("1,234.50"), s("1234.5"));
    }

    #[test]
    fn number_malformed_and_several() {
        assert_eq!(num("I don't know."), None);
        assert_eq!(num(""), None);
        assert_eq!(num("#### "), None);
        // The last number wins when nothing marks the answer.
        assert_eq!(num("She has 3 apples and buys 4 more, so 7"), s("7"));
        // A list like "1,2,3" is three numbers, not 123.
        assert_eq!(num("values 1,2,3"), s("3"));
        // A hyphen between numbers is not a minus sign.
        assert_eq!(num("pages 3-4"), s("4"));
        // The trailing sentence period is not a decimal point.
        assert_eq!(num("So the answer is 42."), s("42"));
        assert_eq!(num("Total: 18."), s("18"));
    }

    #[test]
    fn number_marker_precedence() {
        // "####" beats \boxed{}, which beats a phrase, which beats the last number.
        assert_eq!(num("\\boxed{5} ... #### 6\nthen 7"), s("6"));
        assert_eq!(num("The answer is 3. \\boxed{4} and 9"), s("4"));
        assert_eq!(num("the answer is 3, not 9"), s("3"));
        assert_eq!(num("Final Answer: 12 (checked 2 times)"), s("12"));
        // Last of each marker.
        assert_eq!(num("#### 1\n#### 2"), s("2"));
        assert_eq!(num("\\boxed{1} or \\boxed{2}"), s("2"));
        assert_eq!(num("Answer: 5. Wait, the answer is 8 since 2+6"), s("8"));
        // A marker without a number falls through to the next rule.
        assert_eq!(num("3 apples, #### unknown"), s("3"));
        assert_eq!(num("\\boxed{x} so 10"), s("10"));
        // Nested braces and LaTeX thousands separators inside \boxed.
        assert_eq!(num("\\boxed{\\text{$1{,}500$}}"), s("1500"));
        assert_eq!(num("#### -2.50"), s("-2.5"));
        assert_eq!(num("#### $1,000.00"), s("1000"));
    }

    #[test]
    fn number_list_markers_are_ordinary_numbers() {
        let t = "1. Add 2 and 3.\n2. Multiply by 4.\nThe answer is 20.";
        assert_eq!(num(t), s("20"));
        assert_eq!(num("Steps:\n1. think\n2."), s("2"));
    }

    #[test]
    fn choice_patterns() {
        assert_eq!(choice("The answer is (B)."), s("B"));
        assert_eq!(choice("Answer: C"), s("C"));
        assert_eq!(choice("**Answer:** D because ..."), s("D"));
        assert_eq!(choice("I pick **E** here."), s("E"));
        assert_eq!(choice("so the answer is option (c)"), s("C"));
        assert_eq!(choice("the answer is [A]"), s("A"));
        // Last explicit occurrence wins, even over a trailing lone letter.
        assert_eq!(choice("Answer: A. Hmm, no: the answer is B. Not C"), s("B"));
        assert_eq!(choice("**A** looks plausible but **D** is right"), s("D"));
        // Trailing lone tokens.
        assert_eq!(choice("After checking, B"), s("B"));
        assert_eq!(choice("Therefore (d)."), s("D"));
        assert_eq!(choice("Therefore C)"), s("C"));
        assert_eq!(choice("Best option:\nA."), s("A"));
    }

    #[test]
    fn choice_article_trap_and_nonsense() {
        assert_eq!(choice("A cat sat on the mat."), None);
        assert_eq!(choice("The answer is a cat"), None);
        assert_eq!(choice("The answer is Alice"), None);
        assert_eq!(choice("It is a"), None); // lowercase bare "a" is an article
        assert_eq!(choice("Answer: F"), None); // only A-E are choices
        assert_eq!(choice(""), None);
        assert_eq!(choice("I am not sure."), None);
    }

    #[test]
    fn text_answers() {
        assert_eq!(
            text("Let me think.\nThe capital is Paris.\n"),
            s("the capital is paris")
        );
        assert_eq!(text("Reasoning...\nAnswer: \"Paris\"."), s("paris"));
        assert_eq!(text("The answer is   New   York."), s("new york"));
        assert_eq!(text("Final answer:\n  **Blue Whale**  \n"), s("blue whale"));
        assert_eq!(text("  'ok'  "), s("ok"));
        assert_eq!(text(""), None);
        assert_eq!(text("  \n \n"), None);
        assert_eq!(text("Answer: \"\""), None);
    }

    #[test]
    fn code_blocks() {
        let t = "Here:\n```python\ndef f(x):   \r\n    return x\n\n```\nDone.";
        assert_eq!(code(t), s("def f(x):\n    return x"));
        // Only the first block counts; blank lines at the edges are dropped.
        let t = "```rust\n\n\nfn a() {}\n\n```\n```rust\nfn b() {}\n```";
        assert_eq!(code(t), s("fn a() {}"));
        // Same code with/without language tag or CRLF normalises the same.
        assert_eq!(code("```\r\nx = 1\r\n```"), code("```py\nx = 1  \n```"));
        // Unclosed fence (truncated reply) keeps what was written.
        assert_eq!(code("```js\nlet a = 1;\n"), s("let a = 1;"));
        assert_eq!(code("```x = 1```"), s("x = 1"));
        assert_eq!(code("def f(): pass"), None);
        assert_eq!(code("```python\n\n```"), None);
        assert_eq!(code(""), None);
    }

    #[test]
    fn json_is_found_in_blocks_prose_or_whole() {
        assert_eq!(
            json(" {\"b\": 1, \"a\": [true, null]} "),
            s(r#"{"a":[true,null],"b":1}"#)
        );
        assert_eq!(json("42"), s("42"));
        let fenced = "Sure:\n```json\n{\"city\": \"Paris\"}\n```\nDone.";
        assert_eq!(json(fenced), s(r#"{"city":"Paris"}"#));
        assert_eq!(json("```\n[1, 2]\n```"), s("[1,2]"));
        // A fenced block that is not JSON is passed over for the next one.
        assert_eq!(
            json("```py\nx = {1}\n```\n```json\n{\"x\": 1}\n```"),
            s(r#"{"x":1}"#)
        );
        // In prose: the first object or array that parses; `{x}` is not JSON.
        let prose = "Set {x} to this: {\"k\": {\"z\": 1, \"y\": \"}\"}} and then [3]";
        assert_eq!(json(prose), s(r#"{"k":{"y":"}","z":1}}"#));
        assert_eq!(json("The list is [1, 2, 3]."), s("[1,2,3]"));
    }

    #[test]
    fn json_unparseable_gives_no_answer() {
        assert_eq!(json(""), None);
        assert_eq!(json("no json here"), None);
        assert_eq!(json("{\"a\": 1,}"), None);
        assert_eq!(json("```json\n{\"a\": \n```"), None);
        assert_eq!(json("{\"unclosed\": [1, 2"), None);
    }

    #[test]
    fn json_canonical_form_votes_equal_values_equal() {
        let same = [
            r#"{"a": 1, "b": {"d": [1, 2], "c": "x"}}"#,
            r#"{"b": {"c": "x", "d": [1.0, 2e0]}, "a": 1.00}"#,
            "```json\n{\n  \"b\": {\"c\": \"x\", \"d\": [1, 2]},\n  \"a\": 1\n}\n```",
        ];
        for t in same {
            assert_eq!(json(t), s(r#"{"a":1,"b":{"c":"x","d":[1,2]}}"#), "{t}");
        }
        // A quoted number, another array order or a fraction are other answers.
        assert_eq!(json(r#"{"a": "1"}"#), s(r#"{"a":"1"}"#));
        assert_ne!(json("[1, 2]"), json("[2, 1]"));
        assert_eq!(json("[0.5, -3.0, 1e300]"), s("[0.5,-3,1e+300]"));
        // Strings keep their escapes valid.
        assert_eq!(
            json(r#"{"q": "say \"hi\"\n"}"#),
            s(r#"{"q":"say \"hi\"\n"}"#)
        );
    }

    #[test]
    fn calls_vote_by_name_and_canonical_arguments() {
        let a = ToolCall::new(
            "w",
            serde_json::json!({"unit": "c", "city": "P", "days": 2.0}),
        );
        let b = ToolCall::new(
            "w",
            serde_json::json!({"city": "P", "days": 2, "unit": "c"}),
        );
        let v = ToolCall::new("v", a.arguments.clone());
        assert_eq!(
            calls_ballot(std::slice::from_ref(&a)),
            r#"{"arguments":{"city":"P","days":2,"unit":"c"},"name":"w"}"#
        );
        let one = |c: &ToolCall| calls_ballot(std::slice::from_ref(c));
        assert_eq!(one(&a), one(&b));
        assert_ne!(one(&a), one(&v));
        assert_eq!(calls_ballot(&[]), NO_CALL);
        let two = calls_ballot(&[a.clone(), v.clone()]);
        assert!(two.starts_with(r#"[{"arguments""#), "{two}");
        assert_ne!(two, calls_ballot(&[v, a]));
    }
}
