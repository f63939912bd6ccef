use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main(
        "journal",
        journal_service::DEFAULT_PORT,
        |_: kai_shared::config::NoServiceSettings| Ok(journal_service::service()),
    )
}
