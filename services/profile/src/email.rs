//! One canonical form of an e-mail address, the same for the login limiter's key,
//! the account lookup and the unique index (`users.email_key`, V5): trimmed, NFKC,
//! a full Unicode case fold (`İ`, `ß`, `ς` fold as Unicode says, not as a
//! database's `lower()` and a locale decide), NFKC again (a fold can leave a
//! string unnormalised), and the domain's trailing dots dropped.
//!
//! Refused outright (400): default-ignorable, format and bidi control characters
//! (a zero-width space or a right-to-left override makes a second address that
//! prints like the first), and a local part or domain label that mixes writing
//! systems (UTS #39 mixed-script detection: Cyrillic `а` inside a Latin name). So a
//! fullwidth, NFD, upper-case, zero-width or Cyrillic variant of a taken address is
//! either the same key (409) or refused (400), never a second account.

use caseless::Caseless;
use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;

/// Why an address has no canonical form (the field error's message).
pub const INVISIBLE: &str = "must not contain invisible, format or text-direction characters";
pub const MIXED_SCRIPT: &str = "must not mix writing systems within a name (lookalike characters)";
pub const NOT_AN_ADDRESS: &str = "must be an e-mail address";

/// The longest address SMTP carries (RFC 5321: 254 characters in a path).
pub const MAX_EMAIL_CHARS: usize = 254;

/// Deliberately simple: one `@`, something before it, a dotted domain after it, no
/// spaces. The only real check of an address is mail that arrives.
pub fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.chars().count() <= MAX_EMAIL_CHARS
        && !local.is_empty()
        && !domain.contains('@')
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| !label.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The canonical form of `raw`, or why it has none.
pub fn canonical(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.chars().any(invisible) {
        return Err(INVISIBLE);
    }
    let folded: String = trimmed
        .nfkc()
        .default_case_fold()
        .collect::<String>()
        .nfkc()
        .collect();
    // Checked again after NFKC, which maps some characters onto others.
    if folded.chars().any(invisible) {
        return Err(INVISIBLE);
    }
    let key = folded.trim_end_matches('.');
    if !is_email(key) {
        return Err(NOT_AN_ADDRESS);
    }
    let (local, domain) = key.split_once('@').ok_or(NOT_AN_ADDRESS)?;
    if !local.is_single_script() || !domain.split('.').all(|l| l.is_single_script()) {
        return Err(MIXED_SCRIPT);
    }
    Ok(key.to_owned())
}

/// Control, default-ignorable (Unicode's DerivedCoreProperties), format (Cf) or
/// bidi control characters; white space is checked by `is_email`.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{0600}'..='\u{0605}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_one_address_have_one_key() {
        let key = canonical("sam@example.org").unwrap();
        for variant in [
            "Sam@Example.org",
            "  SAM@EXAMPLE.ORG.  ",
            "sam@example.org..",
            "ｓａｍ＠ｅｘａｍｐｌｅ．ｏｒｇ",
        ] {
            assert_eq!(canonical(variant).as_deref(), Ok(key.as_str()), "{variant}");
        }
        // NFD and NFC, a full fold (ß = ss; final sigma = sigma), dotted capital I.
        assert_eq!(
            canonical("Jose\u{301}@example.org"),
            canonical("JOSÉ@example.org")
        );
        assert_eq!(canonical("STRASSE@x.de"), canonical("straße@x.de"));
        assert_eq!(canonical("ΣΟΦΟΣ@x.gr"), canonical("σοφος@x.gr"));
        assert_eq!(canonical("İz@x.tr"), canonical("i\u{307}z@x.tr"));
        assert_ne!(canonical("İz@x.tr"), canonical("iz@x.tr"));
    }

    #[test]
    fn invisible_format_bidi_and_mixed_script_addresses_are_refused() {
        for (bad, why) in [
            ("sam\u{200B}@example.org", INVISIBLE),
            ("sam@exa\u{200D}mple.org", INVISIBLE),
            ("\u{202E}gro.elpmaxe@mas", INVISIBLE),
            ("sam\u{00AD}@example.org", INVISIBLE),
            ("sam\u{FEFF}@example.org", INVISIBLE),
            ("sam\u{E0041}@example.org", INVISIBLE),
            // NFKC makes U+00A0 a space, which no address holds.
            ("s\u{00A0}am@example.org", NOT_AN_ADDRESS),
            // Cyrillic а (U+0430) inside Latin names.
            ("s\u{430}m@example.org", MIXED_SCRIPT),
            ("sam@ex\u{430}mple.org", MIXED_SCRIPT),
            ("sam@@example.org", NOT_AN_ADDRESS),
            ("sam@example", NOT_AN_ADDRESS),
        ] {
            assert_eq!(canonical(bad), Err(why), "{bad:?}");
        }
        // One script per name is fine, whatever the script.
        assert!(canonical("саша@пример.рф").is_ok());
        assert!(canonical("first.last+tag-1@example.org").is_ok());
    }
}
