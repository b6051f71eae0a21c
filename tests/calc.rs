//! The calculator: a safe arithmetic evaluator, and checking "a op b = c" in model text.
use conclave::tools::calc::{check_statements, eval, show};

fn ev(s: &str) -> f64 {
    eval(s).unwrap_or_else(|e| panic!("{s}: {e:#}"))
}

fn err(s: &str) -> String {
    match eval(s) {
        Ok(v) => panic!("`{s}` gave {v} but should be refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn operators_precedence_and_associativity() {
    assert_eq!(ev("1 + 2 * 3"), 7.0);
    assert_eq!(ev("(1 + 2) * 3"), 9.0);
    assert_eq!(ev("10 - 4 - 3"), 3.0, "left-associative");
    assert_eq!(ev("2 ^ 3 ^ 2"), 512.0, "power is right-associative");
    assert_eq!(ev("2 ** 10"), 1024.0);
    assert_eq!(ev("-2^2"), -4.0, "unary minus binds looser than ^");
    assert_eq!(ev("2^-1"), 0.5);
    assert_eq!(ev("--3"), 3.0);
    assert_eq!(ev("7 / 2"), 3.5);
    assert_eq!(ev("17 % 5"), 2.0);
    assert_eq!(
        ev("-7 % 3"),
        2.0,
        "Python's remainder takes the divisor's sign"
    );
    assert_eq!(ev("((((4))))"), 4.0);
}

#[test]
fn symbols_decimals_commas_and_percent() {
    assert_eq!(ev("12 × 4"), 48.0);
    assert_eq!(ev("12 x 4"), 48.0);
    assert_eq!(ev("12X4"), 48.0);
    assert_eq!(ev("84 ÷ 2"), 42.0);
    assert_eq!(ev("10 − 3"), 7.0, "U+2212 minus");
    assert_eq!(ev("1,234 + 1"), 1235.0);
    assert_eq!(ev("1,234,567.5 * 2"), 2469135.0);
    assert_eq!(ev(".5 + 0.25"), 0.75);
    assert!((ev("0.1 + 0.2") - 0.3).abs() < 1e-12);
    assert_eq!(
        ev("25% × 80"),
        20.0,
        "a % with no operand after it is a percentage"
    );
    assert_eq!(ev("50%"), 0.5);
}

#[test]
fn anything_else_is_refused_with_a_reason() {
    assert!(err("__import__('os')").contains("not allowed"));
    assert!(err("2 + a").contains("`a` is not allowed"));
    assert!(err("1e5").contains("`e` is not allowed"));
    assert!(err("1 / 0").contains("division by zero"));
    assert!(err("5 % 0").contains("division by zero"));
    assert!(err("(1 + 2").contains("never closed"));
    assert!(err("1 + 2)").contains("unexpected `)`"));
    assert!(err("3 *").contains("ends where a number should be"));
    assert!(err("").contains("empty"));
    assert!(
        err("1,23 + 1").contains("not allowed"),
        "a comma needs three digits"
    );
    assert!(err("10 ^ 400").contains("no finite value"));
    let deep = format!("{}1{}", "(".repeat(100), ")".repeat(100));
    assert!(err(&deep).contains("deeper than 64"));
}

#[test]
fn statements_in_text_are_found_and_checked() {
    let text = "Each box holds 12 × 4 = 48 eggs. Then 48 + 2 = 51, and 51 / 3 = 17.";
    let checks = check_statements(text);
    let got: Vec<(&str, &str, bool)> = checks
        .iter()
        .map(|c| (c.expression.as_str(), c.claimed.as_str(), c.correct))
        .collect();
    assert_eq!(
        got,
        [
            ("12 × 4", "48", true),
            ("48 + 2", "51", false),
            ("51 / 3", "17", true)
        ]
    );
    assert_eq!(checks[1].describe(), "48 + 2 = 51 is wrong: 48 + 2 = 50");
}

#[test]
fn chains_money_rounding_and_gsm8k_annotations() {
    let ok = |t: &str| {
        let c = check_statements(t);
        assert!(!c.is_empty(), "nothing found in {t:?}");
        c.iter().all(|c| c.correct)
    };
    assert!(ok("3 + 4 = 7 + 1 = 8"), "a chain is two statements");
    assert!(ok("5 + 5 = 2 × 5"), "an expression on the right");
    assert!(ok("She pays $5 x 3 = $15 in total."));
    assert!(ok("10 / 3 = 3.33"), "rounded to the decimals written");
    assert!(!ok("10 / 3 = 3.5"));
    assert!(!ok("7 / 2 = 3"), "whole numbers must be exact");
    assert!(ok("Natalia sold 48/2 = <<48/2=24>>24 clips"));
    assert!(ok("1,200 + 300 = 1,500"));
    assert!(ok("(so 3 + 4 = 7)"));
    assert!(ok("First, 6 * 7 = 42."));
    assert!(ok("A quarter: 1/4 = 25%"));
    assert!(!ok("3 + 4 = 7 + 1 = 9"));
}

#[test]
fn units_markdown_and_latex_are_read_through() {
    let one = |t: &str| {
        let c = check_statements(t);
        assert_eq!(c.len(), 1, "{t:?} gave {c:?}");
        (c[0].expression.clone(), c[0].claimed.clone(), c[0].correct)
    };
    assert_eq!(
        one("17 boxes × 24 pens per box = 408 pens"),
        ("17 × 24".into(), "408".into(), true)
    );
    assert_eq!(
        one("\\[ 17 \\text{ boxes} \\times 24 \\text{ pens} = 409 \\text{ pens} \\]"),
        ("17 × 24".into(), "409".into(), false)
    );
    assert!(one("\\( \\frac{3}{4} \\cdot 8 = 6 \\)").2);
    assert_eq!(
        one("So 408 + 35 = **443** pens."),
        ("408 + 35".into(), "443".into(), true)
    );
    assert!(one("2 ** 10 = 1024").2, "a power stays a power");
    assert!(one("25% of 80 = 20").2);
    assert!(one("3 times 4 = 12").2);
    assert!(one("She buys 3 pies x 4 = 12").2);
}

#[test]
fn text_without_computations_gives_no_checks() {
    for t in [
        "x = 5",
        "The answer is 42.",
        "if a == b + 1:",
        "n >= 3 * 2",
        "a = b + c",
        "let total = apples + 3",
    ] {
        assert_eq!(check_statements(t), vec![], "{t}");
    }
}

#[test]
fn values_are_shown_as_written() {
    assert_eq!(show(48.0), "48");
    assert_eq!(show(-3.0), "-3");
    assert_eq!(show(0.25), "0.25");
    assert_eq!(show(10.0 / 3.0), "3.3333333333");
}
