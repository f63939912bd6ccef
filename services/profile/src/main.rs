use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main("profile", profile_service::DEFAULT_PORT, |_| {
        Ok(profile_service::service())
    })
}
