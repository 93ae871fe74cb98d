//! The reads every admission makes (has this message id been seen? what is this consent?).
//!
//! On SQLite the replay table is read synchronously, on the caller's thread, through a few
//! connections of this module's own ([`SqliteReaders`]): a point lookup in the page cache costs
//! a few microseconds, less than handing it to another thread and back (DESIGN §11), and WAL
//! readers never wait for the writer or the checkpointer (PASSIVE). The busy timeout only
//! matters where SQLite makes a reader wait, such as recovering the WAL after a crash; the
//! request's thread waits then, as every other reader would. Everywhere else (PostgreSQL, and
//! consents SQLite does not have cached) one task takes every lookup waiting, reads them
//! together (one statement for the message ids of a sender, one read transaction for the
//! consents) and answers each; what arrives meanwhile waits for the next round. There is no
//! timer: a lone request is read at once. The answers are the same as the single reads give.
//!
//! On SQLite the database belongs to this one node and every change to a consent goes through
//! its write path, so consents are also kept in a [`ConsentCache`] that the writer clears of
//! every consent a commit changed. A read that raced such a commit is not cached (each read
//! notes the cache's generation first). On PostgreSQL other replicas change consents too, so
//! there is no cache. Either way the inbox insert checks the consent again inside the commit.

use super::messages::{seen_columns, seen_from_row};
use super::{Database, SeenMessage, StorageError, StoredConsent, consents, seen_messages};
use crate::domain::{ConsentId, MessageId, OrgId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    /// Shared, not copied: every message under a consent reads it.
    consents: HashMap<ConsentId, Arc<StoredConsent>>,
}

impl ConsentCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // A panic while holding the lock cannot leave the map half-changed in a way that
        // matters: every entry is a whole consent as read.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, id: &ConsentId) -> Option<Arc<StoredConsent>> {
        self.lock().consents.get(id).cloned()
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps what a read that began at `generation` found, unless a commit changed consents
    /// since.
    fn keep(&self, generation: u64, found: &HashMap<ConsentId, Arc<StoredConsent>>) {
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
        answer: Answer<Option<Arc<StoredConsent>>>,
    },
}

/// Connections kept open for synchronous reads; more are opened while more readers are busy.
const IDLE_READERS: usize = 4;

/// SQLite connections that read on the caller's thread (see the module's comment).
pub struct SqliteReaders {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl SqliteReaders {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        // A connection is pushed or popped whole; a panic elsewhere leaves the list usable.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `read` on an idle connection (or a new one), then keeps the connection for the next.
    fn read<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let idle = self.idle().pop();
        let connection = match idle {
            Some(connection) => connection,
            None => open_reader(&self.path)?,
        };
        let result = read(&connection);
        let mut idle = self.idle();
        // A connection left inside a transaction (a failed read) is closed, not reused.
        if idle.len() < IDLE_READERS && connection.is_autocommit() {
            idle.push(connection);
        }
        result
    }
}

fn open_reader(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    let connection = super::write_tx::open_direct(path)?;
    // These connections only read; SQLite refuses any write on them.
    connection.pragma_update(None, "query_only", "ON")?;
    Ok(connection)
}

/// The replay table's rows of these message ids from `sender`, read in one snapshot.
fn seen_directly(
    connection: &rusqlite::Connection,
    sender: &OrgId,
    message_ids: &[&MessageId],
) -> Result<HashMap<MessageId, SeenMessage>, StorageError> {
    use rusqlite::OptionalExtension as _;
    let read = || -> Result<HashMap<MessageId, SeenMessage>, StorageError> {
        let mut select = connection.prepare_cached(concat!(
            "SELECT ",
            seen_columns!(),
            " FROM seen_messages WHERE sender = ?1 AND message_id = ?2"
        ))?;
        let mut found = HashMap::new();
        for id in message_ids {
            let row = select
                .query_row((sender.as_str(), id.as_str()), |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                })
                .optional()?;
            if let Some(row) = row {
                found.insert((*id).clone(), seen_from_row(row)?);
            }
        }
        Ok(found)
    };
    if message_ids.len() < 2 {
        return read();
    }
    connection.execute_batch("BEGIN")?;
    let found = read();
    connection.execute_batch("COMMIT")?;
    found
}

/// The handle admissions read through; cheap to clone.
#[derive(Clone)]
pub struct Lookups {
    sender: mpsc::Sender<Lookup>,
    cache: Option<Arc<ConsentCache>>,
    /// SQLite's synchronous readers of the replay table; `None` on PostgreSQL.
    readers: Option<Arc<SqliteReaders>>,
    db: Database,
}

impl Lookups {
    /// Starts the task that answers lookups from `db`, keeping consents in `cache` if given
    /// (only where every change to a consent goes through this node's writer, which clears
    /// it). The task ends when every handle is dropped.
    pub fn spawn(db: Database, cache: Option<Arc<ConsentCache>>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let readers = match &db {
            Database::Sqlite(pool) => Some(Arc::new(SqliteReaders::new(
                pool.connect_options().get_filename(),
            ))),
            Database::Postgres(_) => None,
        };
        tokio::spawn(run(db.clone(), cache.clone(), receiver));
        Self {
            sender,
            cache,
            readers,
            db,
        }
    }

    /// The first answers to these message ids from `sender`, for the ids that were seen: one
    /// read for a whole batch.
    pub async fn seen_messages(
        &self,
        sender: &OrgId,
        message_ids: &[&MessageId],
    ) -> Result<HashMap<MessageId, SeenMessage>, StorageError> {
        match (&self.readers, message_ids) {
            (Some(readers), _) => readers.read(|c| seen_directly(c, sender, message_ids)),
            // One id joins the shared rounds of the lookup task; a batch reads its own.
            (None, [id]) => Ok(self
                .seen_by_task(sender, id)
                .await?
                .map(|seen| HashMap::from([((*id).clone(), seen)]))
                .unwrap_or_default()),
            (None, _) => seen_messages(&self.db, sender, message_ids).await,
        }
    }

    /// The first answer to `message_id` from `sender`, if it was seen, read in the lookup
    /// task's next round.
    async fn seen_by_task(
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
    pub async fn consent(
        &self,
        id: &ConsentId,
    ) -> Result<Option<Arc<StoredConsent>>, StorageError> {
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
    let mut consents_asked: Vec<(ConsentId, Answer<Option<Arc<StoredConsent>>>)> = Vec::new();
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
                let found: HashMap<ConsentId, Arc<StoredConsent>> = found
                    .into_iter()
                    .map(|(id, consent)| (id, Arc::new(consent)))
                    .collect();
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
