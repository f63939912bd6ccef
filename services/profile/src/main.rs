use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main(
        profile_service::BINARY,
        |_: kai_shared::config::NoServiceSettings| Ok(profile_service::service()),
    )
}
