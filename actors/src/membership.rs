//! Cluster membership as pure logic: which members a node knows, and whether each is `up`,
//! `suspect` or `down`, from when their heartbeats arrived.
//!
//! A member is **up** while heartbeats arrive, **suspect** once none came for half the failure
//! timeout, and **down** once none came for the whole of it; its last known facts are kept, so a
//! down member is still listed. Each start of a node is a new *incarnation*: while one
//! incarnation of a name is up, heartbeats of another incarnation with that name are refused (two
//! nodes were given one name); once it is down, a new incarnation replaces it (the node
//! restarted). The transport (`cadre-cluster`) feeds heartbeats in and sends this node's out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cadre_proto::v1::NodeInfo;

/// The role of the node that holds the event log.
pub const CONTROLLER: &str = "controller";
/// The role of every other node.
pub const MEMBER: &str = "member";

/// What a member is, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Heard from within half the failure timeout.
    Up,
    /// Not heard from for half the failure timeout.
    Suspect,
    /// Not heard from for the failure timeout.
    Down,
}

impl MemberState {
    /// The state's name in the API (`up`, `suspect`, `down`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}

/// Why a heartbeat was not taken: the sender may not be a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another node of that name is up.
    #[error(
        "a node named `{name}` is already a member (up at {address}); give this node another \
         name (cluster.node or --node)"
    )]
    DuplicateName {
        /// The name both use.
        name: String,
        /// Where the member of that name is.
        address: String,
    },
    /// A cluster has one controller node; this one started later than the one it has.
    #[error(
        "the cluster's controller node is `{controller}` (it holds the event log); a second \
         node with store.embedded cannot join: give this node `store: {{cluster: {{}}}}`"
    )]
    SecondController {
        /// The cluster's controller node.
        controller: String,
    },
}

/// Whether `peer` may not join a cluster of which `me` is a member: it has `me`'s name (another
/// incarnation) or is a second controller, and started after `me` (of two such nodes, the
/// later one leaves, whoever decides).
pub fn refusal_by(me: &NodeInfo, peer: &NodeInfo) -> Option<Refusal> {
    if !started_later(peer, me) {
        return None;
    }
    if peer.name == me.name && peer.incarnation != me.incarnation {
        return Some(Refusal::DuplicateName {
            name: peer.name.clone(),
            address: me.cluster_address.clone(),
        });
    }
    if me.role == CONTROLLER && peer.role == CONTROLLER {
        return Some(Refusal::SecondController {
            controller: me.name.clone(),
        });
    }
    None
}

/// Of two nodes, whether `a` started after `b` (by start time, then name and incarnation):
/// every node that sees both decides the same.
fn started_later(a: &NodeInfo, b: &NodeInfo) -> bool {
    (a.started_unix_ms, &a.name, &a.incarnation) > (b.started_unix_ms, &b.name, &b.incarnation)
}

/// The members this node knows, itself excluded.
#[derive(Debug, Clone)]
pub struct Members {
    failure_timeout: Duration,
    members: BTreeMap<String, Member>,
}

#[derive(Debug, Clone)]
struct Member {
    info: NodeInfo,
    heard: Instant,
    /// False once its last connection closed: a new incarnation may then take its name at
    /// once (the node restarted faster than the failure timeout).
    connected: bool,
}

/// A change of a member's state, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The member.
    pub name: String,
    /// Its state before (`None`: it is new).
    pub from: Option<MemberState>,
    /// Its state now.
    pub to: MemberState,
}

impl Members {
    /// No members yet; `failure_timeout` decides when one is `down`.
    pub fn new(failure_timeout: Duration) -> Self {
        Self {
            failure_timeout,
            members: BTreeMap::new(),
        }
    }

    /// A heartbeat of `info` arrived at `now`. Refused if another incarnation of its name is
    /// not yet down; otherwise recorded, with the transition it caused if any.
    pub fn heard(&mut self, info: NodeInfo, now: Instant) -> Result<Option<Transition>, Refusal> {
        let before = match self.members.get(&info.name) {
            Some(m) if m.info.incarnation != info.incarnation => {
                if m.connected
                    && self.state_of(m, now) != MemberState::Down
                    && started_later(&info, &m.info)
                {
                    return Err(Refusal::DuplicateName {
                        name: info.name.clone(),
                        address: m.info.cluster_address.clone(),
                    });
                }
                Some(MemberState::Down)
            }
            Some(m) => Some(self.state_of(m, now)),
            None => None,
        };
        if info.role == CONTROLLER
            && let Some(first) = self.members.values().find(|m| {
                m.info.name != info.name
                    && m.info.role == CONTROLLER
                    && self.state_of(m, now) != MemberState::Down
                    && started_later(&info, &m.info)
            })
        {
            return Err(Refusal::SecondController {
                controller: first.info.name.clone(),
            });
        }
        let name = info.name.clone();
        self.members.insert(
            name.clone(),
            Member {
                info,
                heard: now,
                connected: true,
            },
        );
        Ok((before != Some(MemberState::Up)).then_some(Transition {
            name,
            from: before,
            to: MemberState::Up,
        }))
    }

    /// Every member with its state at `now`, by name; `last_heard_unix_ms` is left as sent.
    pub fn list(&self, now: Instant) -> Vec<(NodeInfo, MemberState)> {
        self.members
            .values()
            .map(|m| (m.info.clone(), self.state_of(m, now)))
            .collect()
    }

    /// The first member with role `role` that is not `down` at `now` (one clone, for the hot
    /// path of every remote call).
    pub fn find_role(&self, role: &str, now: Instant) -> Option<NodeInfo> {
        self.members
            .values()
            .find(|m| m.info.role == role && self.state_of(m, now) != MemberState::Down)
            .map(|m| m.info.clone())
    }

    /// The members whose state at `now` differs from `last`, the map of states seen before;
    /// `last` is updated.
    pub fn transitions(
        &self,
        last: &mut BTreeMap<String, MemberState>,
        now: Instant,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for (name, m) in &self.members {
            let state = self.state_of(m, now);
            let before = last.insert(name.clone(), state);
            if before != Some(state) {
                out.push(Transition {
                    name: name.clone(),
                    from: before,
                    to: state,
                });
            }
        }
        out
    }

    /// This node stalled for `gap` (it was paused, or starved of CPU): it heard nothing
    /// meanwhile, which says nothing of the members. Each member's silence is counted as if
    /// the gap had not been.
    pub fn stalled(&mut self, gap: Duration) {
        for m in self.members.values_mut() {
            m.heard += gap;
        }
    }

    /// The last connection to member `name` closed. Its state still follows its heartbeats
    /// (a connection may come back), but another incarnation may now take its name.
    pub fn disconnected(&mut self, name: &str) {
        if let Some(m) = self.members.get_mut(name) {
            m.connected = false;
        }
    }

    fn state_of(&self, member: &Member, now: Instant) -> MemberState {
        let silent = now.saturating_duration_since(member.heard);
        if silent >= self.failure_timeout {
            MemberState::Down
        } else if silent >= self.failure_timeout / 2 {
            MemberState::Suspect
        } else {
            MemberState::Up
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, incarnation: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            incarnation: incarnation.into(),
            started_unix_ms: incarnation.parse().unwrap_or_default(),
            cluster_address: format!("{name}:7500"),
            ..Default::default()
        }
    }

    #[test]
    fn a_member_is_up_then_suspect_then_down_as_its_heartbeats_stop() {
        let t0 = Instant::now();
        let mut members = Members::new(Duration::from_secs(2));
        let joined = members.heard(node("b", "1"), t0).expect("taken");
        assert_eq!(
            joined,
            Some(Transition {
                name: "b".into(),
                from: None,
                to: MemberState::Up
            })
        );
        let state = |at: Duration| members.list(t0 + at)[0].1;
        assert_eq!(state(Duration::from_millis(999)), MemberState::Up);
        assert_eq!(state(Duration::from_millis(1000)), MemberState::Suspect);
        assert_eq!(state(Duration::from_millis(1999)), MemberState::Suspect);
        assert_eq!(state(Duration::from_millis(2000)), MemberState::Down);
        let mut seen = BTreeMap::new();
        assert_eq!(members.transitions(&mut seen, t0).len(), 1, "b is new");
        let down = members.transitions(&mut seen, t0 + Duration::from_secs(3));
        assert_eq!(down[0].to, MemberState::Down);
        assert!(
            members
                .transitions(&mut seen, t0 + Duration::from_secs(4))
                .is_empty()
        );
    }

    #[test]
    fn another_incarnation_of_a_name_is_refused_while_the_first_is_not_down() {
        let t0 = Instant::now();
        let mut members = Members::new(Duration::from_secs(2));
        members.heard(node("b", "1"), t0).expect("taken");
        let refused = members.heard(node("b", "2"), t0 + Duration::from_millis(1500));
        assert!(
            matches!(refused, Err(Refusal::DuplicateName { ref name, .. }) if name == "b"),
            "{refused:?}"
        );
        // The first is down: the second is the node restarted.
        let back = members
            .heard(node("b", "2"), t0 + Duration::from_secs(3))
            .expect("taken");
        assert_eq!(back.map(|t| t.from), Some(Some(MemberState::Down)));
        assert_eq!(
            members.list(t0 + Duration::from_secs(3))[0].0.incarnation,
            "2"
        );
    }

    #[test]
    fn a_node_that_restarts_before_the_timeout_takes_its_name_back_once_disconnected() {
        let t0 = Instant::now();
        let mut members = Members::new(Duration::from_secs(2));
        members.heard(node("b", "1"), t0).expect("taken");
        members.disconnected("b");
        let back = members
            .heard(node("b", "2"), t0 + Duration::from_millis(300))
            .expect("the old incarnation's connection closed");
        assert_eq!(
            back.map(|t| t.from),
            Some(Some(MemberState::Down)),
            "the old incarnation is gone: a restart"
        );
        assert_eq!(members.list(t0)[0].0.incarnation, "2");
    }

    #[test]
    fn a_second_controller_that_started_later_is_refused_by_every_node() {
        let t0 = Instant::now();
        let controller = |name: &str, started: u64| NodeInfo {
            role: CONTROLLER.into(),
            ..node(name, &started.to_string())
        };
        let (a, b) = (controller("a", 100), controller("b", 200));
        assert!(matches!(
            refusal_by(&a, &b),
            Some(Refusal::SecondController { ref controller }) if controller == "a"
        ));
        assert_eq!(refusal_by(&b, &a), None, "the first one is not refused");
        let mut members = Members::new(Duration::from_secs(2));
        members.heard(a.clone(), t0).expect("taken");
        assert!(members.heard(b, t0).is_err(), "a third node refuses b too");
        let member = NodeInfo {
            role: MEMBER.into(),
            ..node("c", "300")
        };
        assert_eq!(refusal_by(&a, &member), None);
        let twin = node("a", "400");
        assert!(
            matches!(refusal_by(&a, &twin), Some(Refusal::DuplicateName { .. })),
            "a later node with a's name is refused"
        );
        assert_eq!(refusal_by(&twin, &a), None, "and does not refuse a");
    }

    #[test]
    fn a_stall_of_this_node_does_not_count_as_the_members_silence() {
        let t0 = Instant::now();
        let mut members = Members::new(Duration::from_secs(2));
        members.heard(node("b", "1"), t0).expect("taken");
        members.heard(node("c", "1"), t0).expect("taken");
        // b was already down before the stall; c was up.
        members.members.get_mut("b").expect("b").heard = t0 - Duration::from_secs(5);
        members.stalled(Duration::from_secs(10));
        let states: Vec<MemberState> = members
            .list(t0 + Duration::from_secs(10))
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(states, [MemberState::Down, MemberState::Up]);
    }

    #[test]
    fn the_controller_is_found_until_it_is_down() {
        let t0 = Instant::now();
        let mut members = Members::new(Duration::from_secs(2));
        members.heard(node("b", "1"), t0).expect("taken");
        let controller = NodeInfo {
            role: CONTROLLER.into(),
            ..node("a", "1")
        };
        members.heard(controller, t0).expect("taken");
        let found = |at: Duration| members.find_role(CONTROLLER, t0 + at).map(|n| n.name);
        assert_eq!(
            found(Duration::from_millis(1500)).as_deref(),
            Some("a"),
            "suspect counts"
        );
        assert_eq!(found(Duration::from_secs(2)), None, "down does not");
    }

    #[test]
    fn a_suspect_member_heard_again_is_up() {
        let t0 = Instant::now();
        let mut members = Members::new(Duration::from_secs(2));
        members.heard(node("b", "1"), t0).expect("taken");
        let back = members
            .heard(node("b", "1"), t0 + Duration::from_millis(1500))
            .expect("taken");
        assert_eq!(back.map(|t| t.from), Some(Some(MemberState::Suspect)));
        assert!(
            members
                .heard(node("b", "1"), t0 + Duration::from_millis(1600))
                .expect("taken")
                .is_none(),
            "no change"
        );
    }
}
