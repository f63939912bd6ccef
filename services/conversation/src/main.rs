use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main(
        "conversation",
        conversation_service::DEFAULT_PORT,
        conversation_service::try_service,
    )
}
