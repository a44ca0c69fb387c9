//! The node's gRPC API: one service per file, each only decoding requests, calling the runtime
//! and encoding answers; every domain error becomes a status in [`status`].

mod actor_spec;
pub mod actors;
pub mod auth;
pub mod cluster;
pub mod conversations;
pub mod log;
pub mod status;
pub mod tls;
pub mod tools;
