//! Who may do what through the API: the roles of bearer tokens and what each allows.
//!
//! Pure policy. The gRPC layer (`cadre-cluster`'s `grpc::auth`) names the [`Action`] of each
//! method and asks [`Caller::may`]; the services ask [`Caller::may_use`] for the conversation a
//! call names. `docs/security.md` states the same table for users.

use crate::exec::SYSTEM_PREFIX;

/// What a token may do, from most to least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including spawning actors (which runs new programs on the node).
    Admin,
    /// Runs the node: execs, tool calls, approvals, stopping and restarting actors, deleting
    /// conversations. Not spawning actors.
    Operator,
    /// Reads everything and decides approvals of tool calls.
    Approver,
    /// Reads everything: trees, actors and their logs, sandboxes, conversations, tools.
    Reader,
    /// Runs execs and tool calls, and reads, only in conversations whose id starts with its
    /// token's `conversation_prefix`; nothing of the node itself.
    AgentUser,
}

/// What a call does, as far as roles are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reads the node: its trees, actors, logs, members, sandboxes, placement.
    ReadNode,
    /// Reads conversations and lists tools (and asks reflection what the API has).
    ReadConversations,
    /// Starts, reconnects to, resumes, forks or cancels an exec, or calls a tool.
    Exec,
    /// Decides an approval of a tool call.
    Approve,
    /// Stops or restarts an actor, or deletes a conversation.
    Operate,
    /// Adds an actor to a tree.
    Spawn,
}

/// The caller of one API call: its token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`api.tokens[].name`), as the audit log records it.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// For [`Role::AgentUser`]: the conversations it may use are those whose id starts with
    /// this.
    pub conversation_prefix: Option<String>,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Approver,
        Role::Reader,
        Role::AgentUser,
    ];

    /// The role's name in `cadre.yaml` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Reader => "reader",
            Role::AgentUser => "agent-user",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether the role allows `action` at all (an agent-user's calls are further limited to
    /// its conversations).
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Operator => action != Spawn,
            Role::Approver => matches!(action, ReadNode | ReadConversations | Approve),
            Role::Reader => matches!(action, ReadNode | ReadConversations),
            Role::AgentUser => matches!(action, ReadConversations | Exec),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Caller {
    /// Whether the caller's role allows `action`.
    pub fn may(&self, action: Action) -> bool {
        self.role.allows(action)
    }

    /// Whether the caller may use conversation `id` (read it, exec in it, call tools in it).
    /// Only an agent-user is limited: to ids under its prefix, never the node's own.
    pub fn may_use(&self, id: &str) -> bool {
        match (&self.role, &self.conversation_prefix) {
            (Role::AgentUser, Some(prefix)) => {
                id.starts_with(prefix.as_str()) && !id.starts_with(SYSTEM_PREFIX)
            }
            (Role::AgentUser, None) => false,
            _ => true,
        }
    }

    /// Why the caller may not use conversation `id` (for PERMISSION_DENIED).
    pub fn refusal_of(&self, id: &str) -> String {
        let scope = match &self.conversation_prefix {
            Some(prefix) => format!("only conversations whose id starts with `{prefix}`"),
            None => "no conversation".into(),
        };
        let id = if id.is_empty() {
            "one it does not name (give a conversation id)".to_string()
        } else {
            format!("`{id}`")
        };
        format!(
            "token `{}` (role {}) may use {scope}, not {id}",
            self.name, self.role
        )
    }
}

/// Why `prefix` cannot scope an agent-user, if it cannot: it must be non-empty and must not
/// reach the node's own conversations (`cadre.…`).
pub fn check_conversation_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".into());
    }
    if SYSTEM_PREFIX.starts_with(prefix) || prefix.starts_with(SYSTEM_PREFIX) {
        return Err(format!(
            "`{prefix}` would reach the node's own conversations (`{SYSTEM_PREFIX}…`)"
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
    {
        return Err(format!(
            "`{bad}` cannot appear in a conversation id (use letters, digits, `.`, `_`, `:` and `-`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, prefix: Option<&str>) -> Caller {
        Caller {
            name: "t".into(),
            role,
            conversation_prefix: prefix.map(str::to_string),
        }
    }

    #[test]
    fn each_role_allows_exactly_its_actions() {
        use Action::*;
        let actions = [ReadNode, ReadConversations, Exec, Approve, Operate, Spawn];
        let table = [
            (Role::Admin, "RCEAOS"),
            (Role::Operator, "RCEAO-"),
            (Role::Approver, "RC-A--"),
            (Role::Reader, "RC----"),
            (Role::AgentUser, "-CE---"),
        ];
        for (role, row) in table {
            let got: String = actions
                .iter()
                .zip(row.chars())
                .map(|(a, letter)| if role.allows(*a) { letter } else { '-' })
                .collect();
            let want: String = row.chars().collect();
            assert_eq!(got, want, "{role}");
        }
    }

    #[test]
    fn an_agent_user_uses_only_its_conversations() {
        let user = caller(Role::AgentUser, Some("acme-"));
        assert!(user.may_use("acme-1"));
        assert!(!user.may_use("other-1"));
        assert!(!user.may_use("acme"));
        assert!(!user.may_use(""));
        assert!(!caller(Role::AgentUser, None).may_use("acme-1"));
        assert!(caller(Role::Reader, None).may_use("cadre.audit"));
        let why = user.refusal_of("other-1");
        assert!(
            why.contains("role agent-user") && why.contains("`acme-`"),
            "{why}"
        );
        assert!(why.contains("`other-1`"), "{why}");
    }

    #[test]
    fn a_prefix_may_not_reach_the_node_s_conversations() {
        assert!(check_conversation_prefix("acme-").is_ok());
        for bad in ["", "c", "cadre", "cadre.", "cadre.audit", "a/b"] {
            assert!(check_conversation_prefix(bad).is_err(), "{bad}");
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
