use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main(
        journal_service::BINARY,
        |_: kai_shared::config::NoServiceSettings| Ok(journal_service::service()),
    )
}
