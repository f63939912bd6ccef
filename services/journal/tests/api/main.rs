//! journal-service end to end: the real application on a random port, a fresh
//! PostgreSQL database and a private Redis key prefix per test.

mod cache;
mod combined;
mod entries;
mod export;
mod helpers;
mod lists;
mod pipelined;
mod platform;
mod search;
mod shutdown;
mod totals;
