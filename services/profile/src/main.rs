use std::process::ExitCode;

/// mimalloc returns freed memory to the system (glibc's per-thread arenas kept
/// the peaks of concurrent work, e.g. 19 MiB per argon2 hash, for good).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    kai_shared::server::main(
        profile_service::BINARY,
        |_: kai_shared::config::NoServiceSettings| Ok(profile_service::service()),
    )
}
