use std::process::ExitCode;

/// mimalloc returns freed memory to the system (glibc's per-thread arenas kept
/// the peaks of concurrent work, e.g. 19 MiB per argon2 hash, for good); the
/// platform's `main` applies its settings (`kai_platform::server::ALLOCATOR_SETTINGS`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    kai_platform::server::main(
        journal_service::BINARY,
        |s: journal_service::config::JournalSettings| Ok(journal_service::service_with(&s)),
    )
}
