//! Building the runtime's child specs from validated config, on the node's services.

use crate::agent::agent_child;
use crate::child::ChildSpec;
use crate::mcp::mcp_child;
use crate::process::process_child;
use crate::services::Services;
use crate::skills::skill_child;
use crate::supervisor::supervisor_child;

use super::{ActorConfig, ChildConfig, SupervisorConfig};

impl SupervisorConfig {
    /// The runtime child specs for this supervisor's children, on the node's `services`.
    pub fn child_specs(&self, services: &Services) -> Vec<ChildSpec> {
        self.children
            .iter()
            .map(|c| c.child_spec(services))
            .collect()
    }
}

impl ChildConfig {
    /// The runtime child spec for this child, on the node's `services`.
    pub fn child_spec(&self, services: &Services) -> ChildSpec {
        let spec = match &self.actor {
            ActorConfig::Process(p) => process_child(&self.id, p.clone()),
            ActorConfig::Mcp(m) => mcp_child(&self.id, m.clone(), services.clone()),
            ActorConfig::Skill(s) => skill_child(&self.id, s.clone(), services.skills.clone()),
            ActorConfig::Agent(a) => agent_child(
                &self.id,
                a.clone(),
                services.agents.clone(),
                services.models.clone(),
            ),
            ActorConfig::Supervisor(s) => {
                supervisor_child(&self.id, s.flags.clone(), s.child_specs(services))
            }
        };
        spec.restart(self.restart)
            .shutdown(self.shutdown)
            .significant(self.significant)
    }
}
