//! `cadre config check` and `cadre config worker-pod`.

use std::path::Path;

use cadre_actors::config::{ActorConfig, Config, SandboxKind, SupervisorConfig};
use cadre_actors::sandbox::SandboxSpec;

use crate::{Failure, Output};

pub fn check(file: &Path) -> Result<(), Failure> {
    let config = Config::load(file).map_err(|e| Failure::Usage(e.to_string()))?;
    let (supervisors, workers) = count(&config.supervisor);
    println!(
        "{}: ok ({} supervisors, {} workers)",
        file.display(),
        supervisors + 1,
        workers
    );
    Ok(())
}

/// The worker pod of a sandbox `example` of tenant `example`, with the config's limits.
pub fn worker_pod(file: &Path, output: Output) -> Result<(), Failure> {
    let config = Config::load(file).map_err(|e| Failure::Usage(e.to_string()))?;
    let Some(kubernetes) = config
        .sandbox
        .kubernetes
        .as_ref()
        .filter(|_| config.sandbox.provider == SandboxKind::Kubernetes)
    else {
        return Err(Failure::Usage(format!(
            "{}: sandbox.provider is not `kubernetes`",
            file.display()
        )));
    };
    let owner = cadre_sandbox::PodOwner::of(&config, None);
    let spec = SandboxSpec {
        id: "example".into(),
        tenant: "example".into(),
        workspace: "/var/lib/cadre/workspaces/example".into(),
        egress: false,
        memory_bytes: config.sandbox.memory_bytes,
        cpus: config.sandbox.cpus,
        pids: config.sandbox.pids,
        workspace_quota: config.sandbox.workspace_bytes,
    };
    let name = cadre_sandbox::kubernetes::pod_name(&owner.node, &spec.id, 0);
    let pod = cadre_sandbox::kubernetes::worker_pod(kubernetes, &owner, None, &spec, &name);
    let value = serde_json::to_value(&pod).map_err(anyhow::Error::from)?;
    crate::emit(output, &value);
    Ok(())
}

fn count(s: &SupervisorConfig) -> (usize, usize) {
    s.children
        .iter()
        .fold((0, 0), |(sup, work), c| match &c.actor {
            ActorConfig::Supervisor(inner) => {
                let (a, b) = count(inner);
                (sup + 1 + a, work + b)
            }
            ActorConfig::Process(_)
            | ActorConfig::Mcp(_)
            | ActorConfig::Skill(_)
            | ActorConfig::Agent(_) => (sup, work + 1),
        })
}
