use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main(
        "profile",
        profile_service::DEFAULT_PORT,
        |_: kai_shared::config::NoServiceSettings| Ok(profile_service::service()),
    )
}
