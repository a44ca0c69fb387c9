//! Isolation providers (gVisor via `runsc`, plain processes, Kubernetes pods) and the worker
//! protocol spoken to `cadre worker` inside a sandbox. See ARCHITECTURE.md; the providers arrive
//! with the sandbox and placement work.
