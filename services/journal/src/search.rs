//! The search text as PostgreSQL's `websearch_to_tsquery` gets it: rebuilt from
//! its words, so no operator soup reaches the parser. Sent as typed, 33 or more
//! `-` in a row overflow the parser's operator stack ("tsquery stack too small",
//! a 500); other runs of operators nest or cancel in ways nobody meant.
//!
//! What is kept of web-search syntax: words (runs of letters and digits; any other
//! character separates words), `"quoted phrases"`, one `-` before a word or
//! phrase (exclude it), and `or` between two terms. What is dropped: every other
//! character, repeated `-`, `or` with no term on either side, empty phrases.
//! So each operator in the result has an operand of its own: the parser's stack
//! never holds more than a few operators, whatever was typed.

/// The rewritten query; empty when the text holds no word (nothing can match).
pub fn websearch_text(q: &str) -> String {
    let mut terms: Vec<String> = Vec::new();
    // `or` seen since the last term: joins the next term to the previous one.
    let mut pending_or = false;
    let mut push = |term: String, pending_or: &mut bool| {
        if *pending_or && !terms.is_empty() {
            terms.push("or".to_owned());
        }
        *pending_or = false;
        terms.push(term);
    };
    let mut rest = q;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        rest = &rest[start..];
        let negated = rest.starts_with('-');
        let body = rest.trim_start_matches('-');
        if let Some(phrase) = body.strip_prefix('"') {
            // A phrase runs to the next quote (or the end).
            let (inside, after) = match phrase.find('"') {
                Some(end) => (&phrase[..end], &phrase[end + 1..]),
                None => (phrase, ""),
            };
            let words = words(inside).collect::<Vec<_>>();
            if !words.is_empty() {
                let sign = if negated { "-" } else { "" };
                push(format!("{sign}\"{}\"", words.join(" ")), &mut pending_or);
            }
            rest = after;
            continue;
        }
        // A token runs to the next white space or quote.
        let end = body
            .find(|c: char| c.is_whitespace() || c == '"')
            .unwrap_or(body.len());
        let token = &body[..end];
        rest = &body[end..];
        let words = words(token).collect::<Vec<_>>();
        // `or` (`or!` too) is the operator; `-or` excludes a stop word: nothing.
        if let [word] = words.as_slice()
            && word.eq_ignore_ascii_case("or")
        {
            pending_or |= !negated;
            continue;
        }
        match (words.as_slice(), negated) {
            ([], _) => {}
            // `e-mail` stays one term: a phrase of its words.
            ([word], false) => push((*word).to_owned(), &mut pending_or),
            ([word], true) => push(format!("-{word}"), &mut pending_or),
            (many, negated) => {
                let sign = if negated { "-" } else { "" };
                push(format!("{sign}\"{}\"", many.join(" ")), &mut pending_or);
            }
        }
    }
    terms.join(" ")
}

/// The runs of letters and digits; `or` inside a phrase or token is a word like
/// any other, so it is quoted away from the operator by the phrase around it.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::websearch_text as w;

    #[test]
    fn words_phrases_exclusions_and_or_survive() {
        assert_eq!(w("river walk"), "river walk");
        assert_eq!(w("  \"river walk\"  -rain "), "\"river walk\" -rain");
        assert_eq!(w("tea or coffee"), "tea or coffee");
        assert_eq!(w("-\"bad day\" e-mail"), "-\"bad day\" \"e mail\"");
        assert_eq!(w("café 東京"), "café 東京");
    }

    #[test]
    fn operator_soup_is_reduced_to_single_operators_with_operands() {
        assert_eq!(w(&"-".repeat(200)), "");
        assert_eq!(w(&format!("{}word", "-".repeat(100))), "-word");
        assert_eq!(w("- - - - word"), "word");
        assert_eq!(w("or or tea or or or coffee or"), "tea or coffee");
        assert_eq!(w("!!!(a & b) | <-> c:* \"\" \"\"\""), "a b c");
        assert_eq!(w("-or tea OR! coffee"), "tea or coffee");
        assert_eq!(w("\"unterminated phrase"), "\"unterminated phrase\"");
    }
}
