//! Whole-system tests, one binary: the cache engine's guarantees (SPEC §6) against
//! real and private Redis servers, and the services together.

mod cache_engine;
mod cluster;
mod control;
mod erasure;
mod faults;
mod hostile;
mod migrations;
mod online;
mod openapi;
mod pool;
mod readme;
mod redis_acl;
mod replicas;
mod roles;
mod sealed;
mod security;
mod steady_state;
mod storable;
mod system;
mod tls;
