//! Subscriptions: backfill from the store, then live events, with no gap and no duplicate.
//!
//! The hand-over: backfill page by page; when a page comes back short (the end is near),
//! register for live events, then read once more from the store. The writer publishes only
//! after a commit, so every event is either in that last read or arrives live (or both, and
//! the seq check drops the copy). A live subscriber that falls [`LIVE_BUFFER`] events behind
//! is cut off with [`SubscribeError::TooSlow`] instead of slowing the writer down.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cadre_proto::v1::Event;
use tokio::sync::mpsc;

use super::{Controller, SubscribeError};
use crate::event_log::EventFeed;
use crate::store::StoreError;

/// Events a live subscriber may fall behind before it is cut off.
pub(super) const LIVE_BUFFER: usize = 4096;
const PAGE: usize = 1024;

/// Live subscribers by conversation.
#[derive(Default)]
pub(super) struct Hub {
    subscribers: Mutex<HashMap<String, Vec<Live>>>,
    /// Set once the controller no longer serves subscriptions: why (see [`Hub::end_all`]).
    ended: Mutex<Option<SubscribeError>>,
}

struct Live {
    tx: mpsc::Sender<Arc<Event>>,
    cut_off: CutOff,
}

/// Set when the hub drops a subscriber, saying why.
type CutOff = Arc<Mutex<Option<SubscribeError>>>;

impl Hub {
    /// Delivers committed events; never blocks the writer.
    pub(super) fn publish(&self, conversation: &str, events: Vec<Arc<Event>>) {
        let mut subscribers = self.subscribers.lock().expect("hub lock");
        let Some(list) = subscribers.get_mut(conversation) else {
            return;
        };
        list.retain(|live| {
            for event in &events {
                match live.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        *live.cut_off.lock().expect("cut-off lock") =
                            Some(SubscribeError::TooSlow {
                                buffer: LIVE_BUFFER,
                                last_seq: event.seq - 1,
                            });
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        if list.is_empty() {
            subscribers.remove(conversation);
        }
    }

    /// Live subscriptions now (those whose subscriber went away are not counted).
    pub(super) fn live(&self) -> usize {
        let subscribers = self.subscribers.lock().expect("hub lock");
        subscribers
            .values()
            .flatten()
            .filter(|l| !l.tx.is_closed())
            .count()
    }

    /// Ends every live subscription of a deleted conversation.
    pub(super) fn close(&self, conversation: &str) {
        let removed = self
            .subscribers
            .lock()
            .expect("hub lock")
            .remove(conversation);
        for live in removed.into_iter().flatten() {
            *live.cut_off.lock().expect("cut-off lock") =
                Some(SubscribeError::Deleted(conversation.to_string()));
        }
    }

    /// Ends every live subscription, and those that register later, with `why`: the
    /// controller stepped down, and its subscribers must subscribe to the next one.
    pub(super) fn end_all(&self, why: SubscribeError) {
        // Under the subscribers' lock, which `register` holds while it looks at `ended`.
        let mut subscribers = self.subscribers.lock().expect("hub lock");
        *self.ended.lock().expect("hub lock") = Some(why.clone());
        let removed = std::mem::take(&mut *subscribers);
        drop(subscribers);
        for live in removed.into_values().flatten() {
            *live.cut_off.lock().expect("cut-off lock") = Some(why.clone());
        }
    }

    fn register(&self, conversation: &str) -> (mpsc::Receiver<Arc<Event>>, CutOff) {
        let (tx, rx) = mpsc::channel(LIVE_BUFFER);
        let cut_off = Arc::new(Mutex::new(None));
        let mut subscribers = self.subscribers.lock().expect("hub lock");
        if let Some(why) = self.ended.lock().expect("hub lock").clone() {
            *cut_off.lock().expect("cut-off lock") = Some(why);
            return (rx, cut_off);
        }
        subscribers
            .entry(conversation.to_string())
            .or_default()
            .push(Live {
                tx,
                cut_off: cut_off.clone(),
            });
        (rx, cut_off)
    }
}

/// The local feed behind a [`Subscription`](crate::event_log::Subscription): one
/// conversation's events after some seq.
pub(super) struct Feed {
    controller: Controller,
    conversation: String,
    /// The last seq handed out.
    last: u64,
    buffer: VecDeque<Arc<Event>>,
    live: Option<(mpsc::Receiver<Arc<Event>>, CutOff)>,
    ended: bool,
}

impl Feed {
    pub(super) async fn start(
        controller: Controller,
        conversation: String,
        after_seq: u64,
    ) -> Result<Self, SubscribeError> {
        let last_seq = controller
            .last_seq(&conversation)
            .await
            .map_err(SubscribeError::Store)?
            .ok_or_else(|| SubscribeError::NotFound(conversation.clone()))?;
        if after_seq > last_seq {
            return Err(SubscribeError::OutOfRange {
                conversation_id: conversation,
                after_seq,
                last_seq,
            });
        }
        Ok(Self {
            controller,
            conversation,
            last: after_seq,
            buffer: VecDeque::new(),
            live: None,
            ended: false,
        })
    }

    /// The events from here on, as the stream a subscription hands out.
    pub(super) fn into_stream(self) -> EventFeed {
        Box::pin(futures_util::stream::unfold(self, |mut feed| async move {
            feed.next().await.map(|event| (event, feed))
        }))
    }

    /// The next event, in seq order; `Err` once if the subscriber was cut off, then `None`.
    async fn next(&mut self) -> Option<Result<Arc<Event>, SubscribeError>> {
        loop {
            if self.ended {
                return None;
            }
            while let Some(event) = self.buffer.pop_front() {
                if event.seq <= self.last {
                    continue; // the same event from the catch-up read and the live feed
                }
                if event.seq != self.last + 1 {
                    self.ended = true;
                    return Some(Err(SubscribeError::Store(StoreError::Io(format!(
                        "event log gap in `{}`: seq {} after {}",
                        self.conversation, event.seq, self.last
                    )))));
                }
                self.last = event.seq;
                return Some(Ok(event));
            }
            if let Some((rx, cut_off)) = &mut self.live {
                match rx.recv().await {
                    Some(event) => self.buffer.push_back(event),
                    None => {
                        self.ended = true;
                        let why = cut_off.lock().expect("cut-off lock").take();
                        return why.map(Err);
                    }
                }
                continue;
            }
            let page = match self
                .controller
                .read(&self.conversation, self.last, PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(SubscribeError::Store(e)));
                }
            };
            let short = page.len() < PAGE;
            self.buffer.extend(page.into_iter().map(Arc::new));
            if short {
                // Near the end: go live, then catch up on what committed meanwhile.
                self.live = Some(self.controller.shared.hub.register(&self.conversation));
                let from = self.buffer.back().map_or(self.last, |e| e.seq);
                match self
                    .controller
                    .read(&self.conversation, from, usize::MAX)
                    .await
                {
                    Ok(rest) => self.buffer.extend(rest.into_iter().map(Arc::new)),
                    Err(e) => {
                        self.ended = true;
                        return Some(Err(SubscribeError::Store(e)));
                    }
                }
                // Deleted before this registered (after, the hub ends it).
                if self.buffer.is_empty()
                    && matches!(self.controller.last_seq(&self.conversation).await, Ok(None))
                {
                    self.ended = true;
                    return Some(Err(SubscribeError::Deleted(self.conversation.clone())));
                }
            }
        }
    }
}
