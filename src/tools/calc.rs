//! A calculator for checking an agent's arithmetic: a small expression evaluator (no code is
//! ever run) and a finder of "a op b = c" statements in free text.
//!
//! Grammar: numbers (`1,234.5`, `.5`), `+ - − * × x / ÷ ^ ** %`, parentheses and unary signs.
//! `^`/`**` bind tightest and to the right, and `-2^2` is `-4` as in Python and mathematics.
//! `%` between two operands is the remainder; after a number with no operand following
//! (`25%`, `25% × 80`) it is a percentage.
use anyhow::{bail, Result};
use serde::Serialize;

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// The value of an arithmetic expression, or an error that says what is not allowed.
pub fn eval(expr: &str) -> Result<f64> {
    let tokens = lex(expr)?;
    if tokens.is_empty() {
        bail!("empty expression");
    }
    let mut p = Parser {
        tokens: &tokens,
        pos: 0,
        depth: 0,
    };
    let v = p.sum()?;
    if let Some(t) = p.tokens.get(p.pos) {
        bail!("unexpected {} in `{expr}`", t.show());
    }
    if !v.is_finite() {
        bail!("`{expr}` has no finite value");
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(f64),
    Plus,
    Minus,
    Times,
    Divide,
    Power,
    Percent,
    Open,
    Close,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Plus => "`+`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Times => "`×`".into(),
            Tok::Divide => "`÷`".into(),
            Tok::Power => "`^`".into(),
            Tok::Percent => "`%`".into(),
            Tok::Open => "`(`".into(),
            Tok::Close => "`)`".into(),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '0'..='9' | '.' => {
                let (n, len) = number(&chars[i..])?;
                i += len;
                out.push(Tok::Num(n));
                continue;
            }
            '+' => Tok::Plus,
            '-' | '−' | '–' => Tok::Minus,
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                Tok::Power
            }
            '*' | '×' | 'x' | 'X' | '·' => Tok::Times,
            '/' | '÷' => Tok::Divide,
            '^' => Tok::Power,
            '%' => Tok::Percent,
            '(' => Tok::Open,
            ')' => Tok::Close,
            other => bail!(
                "`{other}` is not allowed in `{s}`: only numbers, + - × ÷ ^ %, and parentheses"
            ),
        };
        out.push(tok);
        i += 1;
    }
    Ok(out)
}

/// A number at the start of `c`: digits with optional `,` groups of exactly three and a
/// decimal part. Returns its value and length in chars.
fn number(c: &[char]) -> Result<(f64, usize)> {
    let mut text = String::new();
    let mut i = 0;
    let digit = |i: usize| c.get(i).is_some_and(|d| d.is_ascii_digit());
    while digit(i) {
        text.push(c[i]);
        i += 1;
        // "1,234": a comma followed by exactly three digits continues the number.
        if c.get(i) == Some(&',') && (1..=3).all(|k| digit(i + k)) && !digit(i + 4) {
            i += 1;
        }
    }
    if c.get(i) == Some(&'.') {
        text.push('.');
        i += 1;
        while digit(i) {
            text.push(c[i]);
            i += 1;
        }
    }
    match text.parse::<f64>() {
        Ok(v) if text != "." => Ok((v, i)),
        _ => bail!("`{text}` is not a number"),
    }
}

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.pos).copied()
    }

    fn sum(&mut self) -> Result<f64> {
        let mut v = self.product()?;
        while let Some(op @ (Tok::Plus | Tok::Minus)) = self.peek() {
            self.pos += 1;
            let r = self.product()?;
            v = if op == Tok::Plus { v + r } else { v - r };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<f64> {
        let mut v = self.unary()?;
        while let Some(op @ (Tok::Times | Tok::Divide | Tok::Percent)) = self.peek() {
            self.pos += 1;
            let r = self.unary()?;
            v = match op {
                Tok::Times => v * r,
                _ if r == 0.0 => bail!("division by zero"),
                Tok::Divide => v / r,
                // Python's remainder: the sign follows the divisor.
                _ => v - r * (v / r).floor(),
            };
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<f64> {
        match self.peek() {
            Some(Tok::Minus) => {
                self.pos += 1;
                Ok(-self.nested(Self::unary)?)
            }
            Some(Tok::Plus) => {
                self.pos += 1;
                self.nested(Self::unary)
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<f64> {
        let base = self.postfix()?;
        if self.peek() == Some(Tok::Power) {
            self.pos += 1;
            let exp = self.nested(Self::unary)?;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    /// A primary, then a percent sign when no operand follows it.
    fn postfix(&mut self) -> Result<f64> {
        let mut v = self.primary()?;
        while self.peek() == Some(Tok::Percent) {
            let next = self.tokens.get(self.pos + 1);
            if matches!(next, Some(Tok::Num(_) | Tok::Open)) {
                break; // a remainder: `product` handles it
            }
            self.pos += 1;
            v /= 100.0;
        }
        Ok(v)
    }

    fn primary(&mut self) -> Result<f64> {
        match self.peek() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(n)
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let v = self.nested(Self::sum)?;
                if self.peek() != Some(Tok::Close) {
                    bail!("a `(` is never closed");
                }
                self.pos += 1;
                Ok(v)
            }
            Some(t) => bail!("expected a number, found {}", t.show()),
            None => bail!("the expression ends where a number should be"),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<f64>) -> Result<f64> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            bail!("the expression nests deeper than {MAX_DEPTH} levels");
        }
        let v = f(self);
        self.depth -= 1;
        v
    }
}

/// One "a op b = c" statement found in a text, and whether it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// The left side as written, e.g. "12 × 4".
    pub expression: String,
    /// The right side as written, e.g. "48".
    pub claimed: String,
    pub value: f64,
    pub correct: bool,
}

impl Check {
    /// "12 × 4 = 50 is wrong: 12 × 4 = 48".
    pub fn describe(&self) -> String {
        if self.correct {
            format!("{} = {} holds", self.expression, self.claimed)
        } else {
            format!(
                "{} = {} is wrong: {} = {}",
                self.expression,
                self.claimed,
                self.expression,
                show(self.value)
            )
        }
    }
}

/// Characters that may be part of a stated computation.
fn is_expr_char(c: char) -> bool {
    c.is_ascii_digit() || " \t.,+-−–*×xX·/÷^%()$".contains(c)
}

/// Every "a op b = c" statement in `text`, checked. The left side is the longest run of
/// arithmetic before an `=` (it must hold an operator); the right side is what follows, up
/// to the next word. A chain "3 + 4 = 7 + 1 = 8" is read as "3 + 4 = 7" and "7 + 1 = 8",
/// and "5 + 5 = 2 × 5" as one statement: the right side counts if either reading holds.
/// `$` signs, units ("17 boxes × 24 pens = 408 pens"), Markdown bold and LaTeX markup
/// (`\times`, `\frac{a}{b}`, `\text{…}`) are dropped first; statements that do not parse
/// are skipped.
pub fn check_statements(text: &str) -> Vec<Check> {
    let text = &plain(text);
    let mut out = Vec::new();
    let eqs: Vec<usize> = text.match_indices('=').map(|(i, _)| i).collect();
    for &eq in &eqs {
        // `==`, `<=`, `>=`, `!=` are comparisons, not statements of a result.
        let before = text[..eq].chars().next_back();
        let after = text[eq + 1..].chars().next();
        if matches!(before, Some('=' | '<' | '>' | '!')) || matches!(after, Some('=' | '>')) {
            continue;
        }
        let left_start = text[..eq]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_expr_char(c))
            .last()
            .map_or(eq, |(i, _)| i);
        let left = trim_left_side(&text[left_start..eq]);
        let right_end = text[eq + 1..]
            .char_indices()
            .find(|&(_, c)| !is_expr_char(c))
            .map_or(text.len(), |(i, _)| eq + 1 + i);
        let right = trim_right_side(&text[eq + 1..right_end]);
        if let Some(c) = check_one(left, right) {
            out.push(c);
        }
    }
    out
}

/// The arithmetic of a model's text without its markup and units.
fn plain(text: &str) -> String {
    let mut t = text.to_string();
    for (from, to) in [
        ("\\times", "×"),
        ("\\cdot", "×"),
        ("\\div", "÷"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\$", "$"),
        ("\\,", ""),
        ("{,}", ","),
        ("\\[", " "),
        ("\\]", " "),
        ("\\(", " "),
        ("\\)", " "),
    ] {
        t = t.replace(from, to);
    }
    t = latex_groups(&t);
    let t = drop_bold(&t);
    drop_units(&t)
}

/// `\frac{a}{b}` becomes `(a)/(b)`; `\text{…}` and `\mathrm{…}` (units) become a space.
fn latex_groups(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let group = |cmd: &str| -> Option<(&str, &str)> {
            let body = after.strip_prefix(cmd)?.strip_prefix('{')?;
            let end = body.find('}')?;
            Some((&body[..end], &body[end + 1..]))
        };
        if let Some((num, tail)) = group("\\frac") {
            if let Some(body) = tail.strip_prefix('{') {
                if let Some(end) = body.find('}') {
                    out.push_str(&format!("({num})/({})", &body[..end]));
                    rest = &body[end + 1..];
                    continue;
                }
            }
        }
        if let Some((_, tail)) = group("\\text").or_else(|| group("\\mathrm")) {
            out.push(' ');
            rest = tail;
            continue;
        }
        out.push('\\');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

/// Markdown's `**` around a number is emphasis, not a power: kept only between operands.
fn drop_bold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("**") {
        let before = rest[..i]
            .chars()
            .rev()
            .chain(out.chars().rev())
            .find(|c| *c != ' ');
        let after = rest[i + 2..].chars().find(|c| *c != ' ');
        let operand_before = before.is_some_and(|c| c.is_ascii_digit() || c == ')');
        let operand_after = after.is_some_and(|c| c.is_ascii_digit() || c == '(');
        out.push_str(&rest[..i]);
        if operand_before && operand_after {
            out.push_str("**");
        }
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

/// Words that follow a number ("24 pens per box") are units: dropped, except `x` and `times`
/// between operands, and `of` after a percentage, which multiply.
fn drop_units(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_number = false;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && (chars[i].is_alphabetic() || chars[i] == '\'') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| **c != ' ');
            let operand_next = next.is_some_and(|n| n.is_ascii_digit() || *n == '(' || *n == '$');
            let percent_before = out.trim_end().ends_with('%');
            if after_number && operand_next && (word == "times" || (word == "of" && percent_before))
            {
                out.push('×'); // "3 times 4", "25% of 80"
                after_number = false;
            } else if !after_number || (operand_next && (word == "x" || word == "X")) {
                out.push_str(&word);
                after_number = false;
            }
            continue;
        }
        if c.is_ascii_digit() || c == '%' {
            after_number = true;
        } else if c != ' ' && c != '\t' {
            after_number = false;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Drops what cannot begin an expression: text before a ", " or ". " (numbers never hold a
/// space), a word's trailing `x`, stray operators, and `(`s never closed ("(so 3 + 4 = 7)").
fn trim_left_side(s: &str) -> &str {
    let s = match (s.rfind(", "), s.rfind(". ")) {
        (Some(a), Some(b)) => &s[a.max(b) + 2..],
        (Some(i), None) | (None, Some(i)) => &s[i + 2..],
        (None, None) => s,
    };
    let mut s = s.trim_start_matches(|c: char| !(c.is_ascii_digit() || "(-−.$".contains(c)));
    loop {
        let opens = s.matches('(').count();
        let closes = s.matches(')').count();
        match s.strip_prefix('(') {
            Some(rest) if opens > closes => s = rest.trim_start(),
            _ => return s.trim(),
        }
    }
}

/// Drops sentence punctuation and `)`s never opened ("(so 3 + 4 = 7)").
fn trim_right_side(s: &str) -> &str {
    let mut s = s.trim().trim_end_matches(['.', ',']).trim_end();
    while s.ends_with(')') && s.matches(')').count() > s.matches('(').count() {
        s = s[..s.len() - 1].trim_end();
    }
    s
}

fn check_one(left: &str, right: &str) -> Option<Check> {
    let clean = |s: &str| s.replace('$', "");
    let has_op = {
        // An operator between operands, not just a sign in front of one number.
        let l = clean(left);
        let body = l.trim_start_matches(['-', '−', '(', ' ']);
        body.chars().any(|c| "+-−–*×xX·/÷^%".contains(c))
    };
    if !has_op || !left.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let value = eval(&clean(left)).ok()?;
    let whole = eval(&clean(right)).ok();
    // The first number of the right side alone, for chains.
    let first_len = right
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || ".,$%".contains(c) || (i == 0 && c == '-')))
        .map_or(right.len(), |(i, _)| i);
    let first = right[..first_len].trim();
    let lead = eval(&clean(first)).ok();
    let (claimed, correct) = match (whole, lead) {
        (Some(w), _) if agrees(value, w, right) => (right, true),
        (_, Some(l)) if agrees(value, l, first) => (first, true),
        (Some(_), _) if first_len == right.len() => (right, false),
        (_, Some(_)) => (first, false),
        (Some(_), None) => (right, false),
        (None, None) => return None,
    };
    let tidy = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(Check {
        expression: tidy(left),
        claimed: tidy(claimed),
        value,
        correct,
    })
}

/// Whether `claimed` (written as `text`) states `value`: exactly for whole numbers, and to
/// the decimals written otherwise ("10 / 3 = 3.33" holds).
fn agrees(value: f64, claimed: f64, text: &str) -> bool {
    let tolerance = match text.rsplit_once('.') {
        Some((_, frac)) if frac.chars().all(|c| c.is_ascii_digit()) && !frac.is_empty() => {
            0.5 * 10f64.powi(-(frac.len() as i32)) + 1e-9
        }
        _ => 1e-9 * value.abs().max(1.0),
    };
    (value - claimed).abs() <= tolerance
}

/// A value as a person would write it: "48", "3.3333333333", "0.25".
pub fn show(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let s = format!("{v:.10}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
