use std::process::ExitCode;

fn main() -> ExitCode {
    kai_shared::server::main(
        conversation_service::BINARY,
        |llm: conversation_service::config::LlmSettings| conversation_service::try_service(&llm),
    )
}
