//! `cadre.v1.Conversations`: decodes requests, hands them to the node's [`Execs`] and streams
//! their events back. The exec lifecycle itself lives in [`cadre_actors::exec`].

use std::pin::Pin;

use cadre_actors::exec::{ExecEvents, Execs, Fork};
use cadre_proto::v1::conversations_server::Conversations;
use cadre_proto::v1::{
    ApproveRequest, CancelRequest, Conversation, DeleteConversationRequest,
    DeleteConversationResponse, Event, ExecRequest, ForkRequest, GetConversationRequest,
    ListConversationsRequest, ListConversationsResponse, SubscribeRequest,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{check_conversation, note_target};
use super::status::{exec_status, subscribe_status};

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ConversationsService {
    execs: Execs,
    /// Becomes true when the node starts to stop: subscriptions end then.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl ConversationsService {
    /// The API of `execs`; subscriptions end cleanly once `stopping` is true.
    pub fn new(execs: Execs, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { execs, stopping }
    }
}

/// The events as a response stream. The response polls them itself, with no task or channel
/// between: the events of one commit reach the encoder together and leave in one write, and a
/// client that goes away drops the subscription at once. With `stopping`, the stream ends
/// cleanly (OK) when the node starts to stop: for subscriptions only, as an exec's stream ends
/// with its exec (its client reconnects to the next run).
fn stream(events: ExecEvents, stopping: Option<tokio::sync::watch::Receiver<bool>>) -> EventStream {
    Box::pin(futures_util::stream::unfold(
        (events, stopping),
        |(mut events, mut stopping)| async move {
            let next = match &mut stopping {
                Some(stop) => tokio::select! {
                    next = events.next() => next?,
                    _ = stop.wait_for(|stopping| *stopping) => return None,
                },
                None => events.next().await?,
            };
            Some((
                next.map(|e| Event::clone(&e)).map_err(subscribe_status),
                (events, stopping),
            ))
        },
    ))
}

#[tonic::async_trait]
impl Conversations for ConversationsService {
    type ExecStream = EventStream;
    type SubscribeStream = EventStream;

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<EventStream>, Status> {
        let id = &request.get_ref().conversation_id;
        note_target(
            &request,
            if id.is_empty() {
                format!(
                    "a new conversation of agent `{}`",
                    request.get_ref().agent_id
                )
            } else {
                id.clone()
            },
        );
        check_conversation(&request, id)?;
        let r = request.into_inner();
        let reconnect = r.input.is_empty();
        // A stopping node takes no new exec: the client sends it to another node.
        if !reconnect && *self.stopping.borrow() {
            return Err(Status::unavailable(
                "this node is stopping and takes no new exec; send it to another node",
            ));
        }
        if reconnect && r.conversation_id.is_empty() {
            return Err(Status::invalid_argument(
                "input: empty; give an input to start an exec, or a conversation_id (and last_seq) \
                 to reconnect to one",
            ));
        }
        let events = if r.resume {
            if !r.input.is_empty() {
                return Err(Status::invalid_argument(
                    "input: must be empty with resume (it continues the unfinished exec)",
                ));
            }
            self.execs.resume(&r.conversation_id, r.last_seq).await
        } else if !reconnect {
            if r.last_seq > 0 {
                return Err(Status::invalid_argument(
                    "input: must be empty with resume or last_seq (they reconnect to an exec)",
                ));
            }
            let conversation = (!r.conversation_id.is_empty()).then_some(r.conversation_id);
            self.execs.start(conversation, r.agent_id, r.input).await
        } else {
            // Reconnect: exactly the events after last_seq, then the running exec to its end.
            self.execs.follow(&r.conversation_id, r.last_seq).await
        };
        Ok(Response::new(stream(events.map_err(exec_status)?, None)))
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        check_conversation(&request, &request.get_ref().conversation_id)?;
        let r = request.into_inner();
        let events = self
            .execs
            .subscribe(&r.conversation_id, r.after_seq)
            .await
            .map_err(exec_status)?;
        Ok(Response::new(stream(events, Some(self.stopping.clone()))))
    }

    async fn get(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        check_conversation(&request, &request.get_ref().conversation_id)?;
        let id = request.into_inner().conversation_id;
        let summary = self.execs.describe(&id).await.map_err(exec_status)?;
        Ok(Response::new(summary))
    }

    async fn list(
        &self,
        request: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        // An agent-user lists only its conversations: those from its prefix on, while they
        // start with it (ids are listed in order).
        let prefix = super::auth::caller(&request).and_then(|c| c.conversation_prefix.clone());
        let r = request.into_inner();
        let after = match &prefix {
            Some(prefix) => r.after.clone().max(before_every_id_under(prefix)),
            None => r.after,
        };
        let mut conversations = self
            .execs
            .list(&after, r.limit)
            .await
            .map_err(exec_status)?;
        if let Some(prefix) = &prefix {
            let under = conversations
                .iter()
                .take_while(|c| c.conversation_id.starts_with(prefix.as_str()))
                .count();
            conversations.truncate(under);
        }
        Ok(Response::new(ListConversationsResponse { conversations }))
    }

    async fn fork(&self, request: Request<ForkRequest>) -> Result<Response<Conversation>, Status> {
        let (src, dest) = (
            &request.get_ref().src_conversation_id,
            &request.get_ref().dest_conversation_id,
        );
        note_target(&request, format!("{src} → {dest}"));
        check_conversation(&request, src)?;
        check_conversation(&request, dest)?;
        let r = request.into_inner();
        let fork = Fork {
            src_conversation_id: r.src_conversation_id,
            at_seq: r.at_seq,
            dest_conversation_id: r.dest_conversation_id,
            patch: r.patch,
        };
        let branch = self.execs.fork(fork).await.map_err(exec_status)?;
        Ok(Response::new(branch))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<Conversation>, Status> {
        note_target(&request, request.get_ref().conversation_id.clone());
        check_conversation(&request, &request.get_ref().conversation_id)?;
        let r = request.into_inner();
        let summary = self
            .execs
            .cancel(&r.conversation_id, &r.exec_id, &r.reason)
            .await
            .map_err(exec_status)?;
        Ok(Response::new(summary))
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<Conversation>, Status> {
        note_target(&request, request.get_ref().conversation_id.clone());
        let r = request.into_inner();
        let summary = self
            .execs
            .approve(&r.conversation_id, &r.call_id, r.approved, &r.reason)
            .await
            .map_err(exec_status)?;
        Ok(Response::new(summary))
    }

    async fn delete(
        &self,
        request: Request<DeleteConversationRequest>,
    ) -> Result<Response<DeleteConversationResponse>, Status> {
        note_target(&request, request.get_ref().conversation_id.clone());
        let conversation_id = request.into_inner().conversation_id;
        let events = self
            .execs
            .delete(&conversation_id)
            .await
            .map_err(exec_status)?;
        Ok(Response::new(DeleteConversationResponse {
            conversation_id,
            events,
        }))
    }
}

/// A cursor just before every conversation id that starts with `prefix`, and after every
/// smaller id: the prefix with its last character lowered by one, then more `z` (the largest
/// character an id may hold) than an id can be long.
fn before_every_id_under(prefix: &str) -> String {
    let mut cursor: Vec<u8> = prefix.as_bytes().to_vec();
    match cursor.last_mut() {
        Some(last) => *last -= 1,
        None => return String::new(),
    }
    cursor.resize(cadre_actors::exec::MAX_ID_LEN + 1, b'z');
    String::from_utf8_lossy(&cursor).into_owned()
}

#[cfg(test)]
mod tests {
    use super::before_every_id_under;

    #[test]
    fn the_cursor_falls_between_the_ids_under_a_prefix_and_the_rest() {
        let cursor = before_every_id_under("acme-");
        let longest = |s: &str| format!("{s}{}", "z".repeat(200 - s.len()));
        for smaller in ["acme", "acme,", "acmd", &longest("acme,"), "a", ""] {
            assert!(smaller < cursor.as_str(), "{smaller}");
        }
        for under in ["acme-", "acme-0", &longest("acme-")] {
            assert!(under > cursor.as_str(), "{under}");
        }
    }
}
