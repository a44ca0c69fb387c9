//! `cadre config check`.

use std::path::Path;

use cadre_actors::config::{ActorConfig, Config, SupervisorConfig};

use crate::Failure;

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
