//! An `agent` child: an actor that holds the agent's registration while it runs.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::AgentSpec;
use super::registry::AgentRegistry;
use crate::child::{ChildSpec, StartContext, StartError, StartFuture, Started};
use crate::model::Models;
use crate::spec::ActorKind;

/// The child spec of an `agent` entry: an actor that holds the agent's registration while it
/// runs (its execs run under the node's `system/agents`).
pub fn agent_child(
    id: impl Into<String>,
    spec: AgentSpec,
    agents: AgentRegistry,
    models: Models,
) -> ChildSpec {
    let id = id.into();
    let agent_id = id.clone();
    let start = move |ctx: StartContext| -> StartFuture {
        let (spec, agents, models, id) = (
            spec.clone(),
            agents.clone(),
            models.clone(),
            agent_id.clone(),
        );
        Box::pin(async move {
            if spec.remote.is_none() && spec.command.is_none() && !models.contains_key(&spec.model)
            {
                return Err(StartError(format!(
                    "agent `{id}`: unknown model `{}` (the node's models: {})",
                    spec.model,
                    models.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            agents.add(&id, &ctx.path, spec).map_err(StartError)?;
            let held = Held {
                agents: agents.clone(),
                id,
                path: ctx.path.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, AgentHolder, held, ctx.supervisor)
                .await
                .map_err(|e| StartError(e.to_string()))?;
            Ok(Started::actor(actor.get_cell()))
        })
    };
    ChildSpec::worker(id, ActorKind::Agent, start)
}

struct Held {
    agents: AgentRegistry,
    id: String,
    path: String,
}

struct AgentHolder;

impl Actor for AgentHolder {
    type Msg = ();
    type State = Held;
    type Arguments = Held;

    async fn pre_start(&self, _: ActorRef<()>, held: Held) -> Result<Held, ActorProcessingErr> {
        Ok(held)
    }

    async fn post_stop(&self, _: ActorRef<()>, held: &mut Held) -> Result<(), ActorProcessingErr> {
        held.agents.remove(&held.id, &held.path);
        Ok(())
    }
}
