//! profile-service end to end: the real application on a random port, a fresh
//! PostgreSQL database and a private Redis key prefix per test.

mod account;
mod auth;
mod email;
mod helpers;
mod platform;
mod profile;
mod ratelimit;
mod revocation;
