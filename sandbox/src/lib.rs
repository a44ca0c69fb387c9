//! Where untrusted work runs: the isolation providers and the worker protocol.
//!
//! Providers implement [`cadre_actors::sandbox::SandboxProvider`]: [`GvisorProvider`] (a `runsc`
//! sandbox per [`Sandbox`]: gVisor's user-space kernel, a read-only view of the host's system
//! directories, the workspace as the only writable host directory, no network unless egress is
//! allowed, memory and CPU limits) and [`ProcessProvider`] (no isolation at all; refused unless
//! explicitly allowed) and [`KubernetesProvider`] (a worker pod per sandbox, reached over TCP with
//! mutual TLS). Each sandbox runs `cadre worker` ([`worker::WorkerService`]), which the
//! node drives over the worker protocol (`cadre.v1.Worker`, gRPC over the sandbox's stdio).
//! [`Placement`] hosts logical actors on the warm pool, and runs the processes of supervised
//! actors (as [`cadre_actors::sandbox::SandboxHost`]).

#![warn(unreachable_pub)]

mod gvisor;
mod host;
pub mod kubernetes;
mod local;
mod placement;
mod pool;
mod process;
mod provider;
pub mod worker;
pub mod workspace;

pub use cadre_actors::sandbox::{Sandbox, SandboxError, SandboxProvider, SandboxSpec, StartFuture};
pub use gvisor::GvisorProvider;
pub use kubernetes::{KubernetesProvider, PodOwner};
pub use local::LocalSandbox;
pub use placement::{Delivered, Pinned, Placement, PlacementError, PlacementEvent};
pub use pool::{
    EndedSandbox, Lease, PoolConfig, PoolError, Resumed, SandboxDied, SandboxInfo, Suspended,
    WarmPool,
};
pub use process::ProcessProvider;
pub use provider::provider;
