//! What actor kinds are given by their node when they start.

use std::sync::Arc;

use crate::agent::AgentRegistry;
use crate::model::Models;
use crate::sandbox::SandboxHost;
use crate::skills::SkillRegistry;
use crate::tools::ToolRegistry;

/// The node's services for actor kinds; cheap to clone.
#[derive(Clone, Default)]
pub struct Services {
    /// Where sandboxed processes run (`None` on a node without sandboxes).
    pub host: Option<Arc<dyn SandboxHost>>,
    /// The node's tools: `mcp` children register theirs here.
    pub tools: ToolRegistry,
    /// The node's skills: `skill` children add theirs here.
    pub skills: SkillRegistry,
    /// The node's models (`models:`), by id.
    pub models: Models,
    /// The node's agents: `agent` children register theirs here.
    pub agents: AgentRegistry,
}
