//! The README's configuration table is rendered from the clap declarations
//! (`kai_platform::config::Settings` and each service's own settings): when a
//! variable is added, renamed or re-defaulted, this test fails until README agrees.

use conversation_service::config::LlmSettings;
use kai_platform::config::{NoServiceSettings, Settings, command, markdown_rows};

const BEGIN: &str =
    "<!-- configuration table: generated from the declaration, see tests/tests/e2e/readme.rs -->\n";
const END: &str = "<!-- end of configuration table -->";

fn rendered() -> String {
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    table += &markdown_rows(&command::<Settings>(), None);
    table += &markdown_rows(&command::<LlmSettings>(), Some("conversation-service"));
    table += &markdown_rows(
        &command::<journal_service::config::JournalSettings>(),
        Some("journal-service"),
    );
    // profile has no settings of its own.
    table += &markdown_rows(&command::<NoServiceSettings>(), None);
    table
}

#[test]
fn readme_configuration_table_matches_the_declaration() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find(BEGIN)
        .expect("README has the table's start marker")
        + BEGIN.len();
    let end = start
        + readme[start..]
            .find(END)
            .expect("README has the end marker");
    let expected = rendered();
    assert!(
        readme[start..end] == expected,
        "README's configuration table differs from the declaration; replace it with:\n{expected}"
    );
}
