//! The rule every new password passes (registration, password change): it is
//! not a common or breached password, nor a variation of one, nor easy to guess.
//!
//! The check is zxcvbn (Dropbox's estimator, the `zxcvbn` crate): its bundled
//! frequency lists hold the 30,000 most common passwords of public breach
//! corpora, English words, names and surnames, and it sees through l33t
//! substitutions, keyboard walks, repeats, sequences, dates and appended digits
//! (`Password123!`, `letmein2024`). A password must need at least 10^8 guesses
//! by its estimate: zxcvbn's own line between "somewhat guessable" and "safely
//! unguessable" against an online attacker (its score 3 starts just above it, so
//! no 8-character password could reach the score: the estimate of eight random
//! characters is exactly 10^8, and it passes here). The user's own words
//! (e-mail, display name, the current password) count as dictionary words.
//! zxcvbn looks at the first 100 characters only, so a check costs well under a
//! millisecond whatever the length (1024 at most).

/// The fewest guesses (zxcvbn's estimate) a new password must need.
pub const MIN_GUESSES: u64 = 100_000_000;

/// `Ok` for an acceptable password, else the field error's message, naming the rule.
pub fn check(password: &str, user_words: &[&str]) -> Result<(), String> {
    let words: Vec<&str> = user_words
        .iter()
        .copied()
        .filter(|w| !w.is_empty())
        .collect();
    let estimate = zxcvbn::zxcvbn(password, &words);
    if estimate.guesses() >= MIN_GUESSES {
        return Ok(());
    }
    let why = estimate
        .feedback()
        .and_then(|f| f.warning())
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    Err(format!(
        "is too common or too easy to guess{why}: the common-password rule needs 10^8 \
         guesses by zxcvbn's estimate, this one needs about 10^{:.0}; a few unrelated \
         words make a strong password",
        estimate.guesses_log10().floor()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_breached_and_guessable_passwords_are_refused_with_the_rule_named() {
        for weak in [
            "12345678",
            "password",
            "password1",
            "Password123!",
            "qwertyuiop",
            "iloveyou123",
            "letmein2024",
            "aaaaaaaaaaaa",
            "abcdefgh",
        ] {
            let why = check(weak, &[]).unwrap_err();
            assert!(why.contains("common-password rule"), "{weak}: {why}");
        }
        // The user's own words are guessable too.
        assert!(check("samwise.gamgee", &["samwise.gamgee"]).is_err());
        assert!(check("samwise.gamgee", &[]).is_ok());
    }

    #[test]
    fn passphrases_pass() {
        for strong in [
            "correct horse battery staple",
            "a longer, newer passphrase",
            "storable-password-1",
            "Tr0ub4dor&3",
            // Eight random characters: exactly the bound.
            "Kx8#qZ2m",
        ] {
            assert_eq!(check(strong, &[]), Ok(()), "{strong}");
        }
    }
}
