//! The reads every admission makes (has this message id been seen? what is this consent?),
//! gathered across concurrent requests into multi-row statements.
//!
//! Under load many requests are being admitted at once. Read one by one, each would cost its
//! own statements, and with SQLite each statement is a hop to the driver's thread (DESIGN §11),
//! which is what a request costs in all. So one task takes every lookup waiting, reads them
//! together (one statement for the message ids of a sender, one read transaction for the
//! consents) and answers each; what arrives meanwhile waits for the next round. There is no
//! timer: a lone request is read at once. The answers are the same as the single reads give.
//!
//! On SQLite the database belongs to this one node and every change to a consent goes through
//! its write path, so consents are also kept in a [`ConsentCache`] that the writer clears of
//! every consent a commit changed. A read that raced such a commit is not cached (each read
//! notes the cache's generation first). On PostgreSQL other replicas change consents too, so
//! there is no cache. Either way the inbox insert checks the consent again inside the commit.

use super::{Database, SeenMessage, StorageError, StoredConsent, consents, seen_messages};
use crate::domain::{ConsentId, MessageId, OrgId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Consents kept at most; when full, the cache starts afresh (at about 1 KiB each, a few MiB).
const CACHE_LIMIT: usize = 4_096;

/// Consents as last read, cleared by the writer of every consent a commit changed.
#[derive(Debug, Default)]
pub struct ConsentCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Counts the commits that changed consents; a read keeps its result only if no such
    /// commit happened while it read.
    generation: u64,
    consents: HashMap<ConsentId, StoredConsent>,
}

impl ConsentCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock cannot leave the map half-changed in a way that
        // matters: every entry is a whole consent as read.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, id: &ConsentId) -> Option<StoredConsent> {
        self.lock().consents.get(id).cloned()
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps what a read that began at `generation` found, unless a commit changed consents
    /// since.
    fn keep(&self, generation: u64, found: &HashMap<ConsentId, StoredConsent>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.consents.len() + found.len() > CACHE_LIMIT {
            inner.consents.clear();
        }
        for (id, consent) in found {
            inner.consents.insert(id.clone(), consent.clone());
        }
    }

    /// Forgets these consents: a commit changed them. Called after the commit.
    pub fn forget<'a>(&self, changed: impl IntoIterator<Item = &'a ConsentId>) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        for id in changed {
            inner.consents.remove(id);
        }
    }
}

/// Lookups taken into one round at most.
const MAX_ROUND: usize = 512;

/// Lookups that may wait for a round before a caller waits to queue one.
const QUEUE: usize = 4_096;

type Answer<T> = oneshot::Sender<Result<T, StorageError>>;

/// The message ids asked about for one sender, each with where its answer goes.
type SeenAsked = Vec<(MessageId, Answer<Option<SeenMessage>>)>;

enum Lookup {
    Seen {
        sender: OrgId,
        message_id: MessageId,
        answer: Answer<Option<SeenMessage>>,
    },
    Consent {
        id: ConsentId,
        answer: Answer<Option<StoredConsent>>,
    },
}

/// The handle admissions read through; cheap to clone.
#[derive(Clone)]
pub struct Lookups {
    sender: mpsc::Sender<Lookup>,
    cache: Option<Arc<ConsentCache>>,
}

impl Lookups {
    /// Starts the task that answers lookups from `db`, keeping consents in `cache` if given
    /// (only where every change to a consent goes through this node's writer, which clears
    /// it). The task ends when every handle is dropped.
    pub fn spawn(db: Database, cache: Option<Arc<ConsentCache>>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, cache.clone(), receiver));
        Self { sender, cache }
    }

    /// The first answer to `message_id` from `sender`, if it was seen.
    pub async fn seen_message(
        &self,
        sender: &OrgId,
        message_id: &MessageId,
    ) -> Result<Option<SeenMessage>, StorageError> {
        let (answer, reply) = oneshot::channel();
        self.ask(
            Lookup::Seen {
                sender: sender.clone(),
                message_id: message_id.clone(),
                answer,
            },
            reply,
        )
        .await
    }

    /// The consent with this id and its events, if this node holds it.
    pub async fn consent(&self, id: &ConsentId) -> Result<Option<StoredConsent>, StorageError> {
        if let Some(consent) = self.cache.as_ref().and_then(|cache| cache.get(id)) {
            return Ok(Some(consent));
        }
        let (answer, reply) = oneshot::channel();
        self.ask(
            Lookup::Consent {
                id: id.clone(),
                answer,
            },
            reply,
        )
        .await
    }

    async fn ask<T>(
        &self,
        lookup: Lookup,
        reply: oneshot::Receiver<Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let stopped = || StorageError::SharedRead("the lookup task has stopped".into());
        self.sender.send(lookup).await.map_err(|_| stopped())?;
        reply.await.map_err(|_| stopped())?
    }
}

async fn run(db: Database, cache: Option<Arc<ConsentCache>>, mut receiver: mpsc::Receiver<Lookup>) {
    let mut round = Vec::with_capacity(MAX_ROUND);
    while receiver.recv_many(&mut round, MAX_ROUND).await > 0 {
        answer_round(&db, cache.as_deref(), std::mem::take(&mut round)).await;
    }
}

/// Reads one round's lookups together and answers each of them.
async fn answer_round(db: &Database, cache: Option<&ConsentCache>, round: Vec<Lookup>) {
    let mut seen_asked: HashMap<OrgId, SeenAsked> = HashMap::new();
    let mut consents_asked: Vec<(ConsentId, Answer<Option<StoredConsent>>)> = Vec::new();
    for lookup in round {
        match lookup {
            Lookup::Seen {
                sender,
                message_id,
                answer,
            } => seen_asked
                .entry(sender)
                .or_default()
                .push((message_id, answer)),
            Lookup::Consent { id, answer } => consents_asked.push((id, answer)),
        }
    }
    for (sender, asked) in seen_asked {
        let ids: Vec<&MessageId> = asked.iter().map(|(id, _)| id).collect();
        match seen_messages(db, &sender, &ids).await {
            Ok(found) => {
                for (id, answer) in asked {
                    let _ = answer.send(Ok(found.get(&id).cloned()));
                }
            }
            Err(e) => answer_all_with(asked, &e),
        }
    }
    if !consents_asked.is_empty() {
        let ids: Vec<&ConsentId> = consents_asked.iter().map(|(id, _)| id).collect();
        let generation = cache.map(ConsentCache::generation);
        match consents(db, &ids).await {
            Ok(found) => {
                if let (Some(cache), Some(generation)) = (cache, generation) {
                    cache.keep(generation, &found);
                }
                for (id, answer) in consents_asked {
                    let _ = answer.send(Ok(found.get(&id).cloned()));
                }
            }
            Err(e) => answer_all_with(consents_asked, &e),
        }
    }
}

/// Answers every lookup of a failed read with the failure (the cause is logged by whoever
/// turns it into a problem).
fn answer_all_with<K, T>(asked: Vec<(K, Answer<T>)>, error: &StorageError) {
    for (_, answer) in asked {
        let _ = answer.send(Err(StorageError::SharedRead(error.to_string())));
    }
}
