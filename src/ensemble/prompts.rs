//! The prompts that strategies send to models, kept in one place so traces can be read
//! against them.

/// Universal Self-Consistency's selection prompt (Chen et al. 2023, "Universal
/// Self-Consistency for Large Language Model Generation", Fig. 2), reworded.
pub fn judge(question: &str, candidates: &[&str]) -> String {
    let mut p = format!("I have generated the following responses to the question: {question}\n\n");
    for (i, c) in candidates.iter().enumerate() {
        p.push_str(&format!("Response {}: {}\n\n", i + 1, c.trim()));
    }
    p.push_str(
        "Evaluate these responses. Select the most consistent response based on majority \
         consensus. Start your answer with \"The most consistent response is Response X\" \
         (without quotes).",
    );
    p
}

/// Mixture-of-Agents' aggregate-and-synthesize prompt (Wang et al. 2024, "Mixture-of-Agents
/// Enhances Large Language Model Capabilities", Table 1), reworded.
pub fn fuse(question: &str, candidates: &[&str]) -> String {
    let mut p = String::from(
        "You have been given several responses to the question below. Synthesize them into a \
         single, high-quality answer. Some responses may be wrong or biased: evaluate them \
         critically and do not simply copy one. Give a well-structured, accurate answer.\n\n",
    );
    p.push_str(&format!("Question: {question}\n\n"));
    for (i, c) in candidates.iter().enumerate() {
        p.push_str(&format!("Response {}: {}\n\n", i + 1, c.trim()));
    }
    p
}

/// One debate round (after Du et al. 2023, "Improving Factuality and Reasoning in Language
/// Models through Multiagent Debate"). Every agent of a round sees all previous answers, its
/// own included, so agents that share a model and role still share one prompt and prefill.
pub fn debate(question: &str, previous: &[&str]) -> String {
    let mut p =
        format!("{question}\n\nThese are the answers the agents gave in the last round:\n\n");
    for (i, c) in previous.iter().enumerate() {
        p.push_str(&format!("Agent {}: {}\n\n", i + 1, shorten(c, 600)));
    }
    p.push_str(
        "Using these answers as extra advice, check the reasoning and give your updated answer.",
    );
    p
}

/// A refine round (after Chen et al. 2023, "Teaching Large Language Models to Self-Debug",
/// and Madaan et al. 2023, "Self-Refine"): the question, then earlier attempts, each with what
/// the verifier found wrong. `attempts` holds (attempt as shown, verifier feedback).
pub fn refine(question: &str, attempts: &[(String, String)]) -> String {
    let mut p = format!("{question}\n\nEarlier attempts failed a check:\n\n");
    for (i, (shown, feedback)) in attempts.iter().enumerate() {
        p.push_str(&format!(
            "Attempt {}:\n{}\nCheck result: {}\n\n",
            i + 1,
            shorten(shown, 1500),
            feedback.trim()
        ));
    }
    p.push_str("Find the mistake and give a corrected, complete answer.");
    p
}

fn shorten(text: &str, max_chars: usize) -> String {
    let t = text.trim();
    match t.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_string(),
    }
}
