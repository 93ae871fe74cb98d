//! The one verification core of the audit log, used by `audit verify` (entries read from the
//! database) and by `audit verify-export` (entries read from a tlog-tiles export), so the two
//! can never disagree about what a sound log is.
//!
//! It recomputes everything from the stored entry bytes: each entry decodes canonically and names
//! its own position, its leaf hash matches the stored one, the root over the first `s` entries
//! matches every signed checkpoint of size `s`, and nothing lies beyond the last checkpoint. Given
//! a checkpoint seen outside the node, it also proves by a consistency proof that today's log
//! extends it, which is what catches an operator who rewrote the log and re-signed it with the
//! node's own key. The first problem is reported with the index it concerns.
//!
//! Pure: no I/O. Hashing and decoding, which dominate the cost, are split across the available
//! cores with scoped threads; the checkpoint roots are then computed in one pass with a frontier.

use super::checkpoint::{Checkpoint, TreeHead};
use super::entry::{self, EntryError};
use super::merkle::{self, Frontier, Hash};
use crate::signed_note::VerifierKey;
use std::fmt;

/// What is wrong, and where: the first bad index when one can be named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct VerifyFailure {
    pub index: Option<u64>,
    pub problem: String,
}

impl VerifyFailure {
    /// A problem that concerns the entry at `index` (or starts there).
    pub fn at(index: u64, problem: impl Into<String>) -> Self {
        Self {
            index: Some(index),
            problem: problem.into(),
        }
    }

    /// A problem with no single index to blame, such as a checkpoint that does not verify.
    pub fn general(problem: impl Into<String>) -> Self {
        Self {
            index: None,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(index) => write!(f, "entry {index}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The number of entries, all covered by a signed checkpoint.
    pub size: u64,
    /// The root over all entries, equal to the root of the largest checkpoint.
    pub root: Hash,
    /// How many checkpoint notes were verified and matched.
    pub checkpoints_checked: usize,
}

/// Below this many entries the cost of starting threads outweighs what they save.
const PARALLEL_THRESHOLD: usize = 8192;
/// The same for checkpoints, each of which costs a signature verification.
const CHECKPOINT_PARALLEL_THRESHOLD: usize = 64;

/// Verifies a log from its stored entries.
///
/// - `entries`: the stored entry bytes in index order (position = leaf index).
/// - `stored_leaf_hashes`: when the source also stores leaf hashes (a database column, level-0
///   tiles), they are compared too, and a mismatch names the index.
/// - `checkpoints`: the signed checkpoint notes of this log found with the entries (the database
///   keeps one per group commit; an export has the latest), in any order.
/// - `key`: the log's verifier key (its name is the origin).
/// - `against`: an earlier checkpoint (signed note) seen outside the node: the current log must
///   extend it.
pub fn verify_log(
    entries: &[&[u8]],
    stored_leaf_hashes: Option<&[Hash]>,
    checkpoints: &[&str],
    key: &VerifierKey,
    against: Option<&str>,
) -> Result<Verified, VerifyFailure> {
    let n = entries.len() as u64;
    let heads = open_checkpoints(checkpoints, key)?;

    let (hashed, entry_failure) = check_entries(entries, stored_leaf_hashes);
    let entry_failure = entry_failure.map(|failure| locate_insertion(failure, entries, &heads));
    // Every position before `sound` passed the per-entry checks, so its leaf hash is filled in
    // and the checkpoints that lie wholly within it can be compared.
    let sound = entry_failure.as_ref().map_or(n, |f| f.position);

    let mut prefix = PrefixRoots::new(&hashed);
    check_checkpoint_roots(&heads, &mut prefix, sound)?;

    let largest = heads.last().map(|h| h.size);
    // Scan order decides which problem comes first: entries beyond the last checkpoint start at
    // its size, which may come before a per-entry problem further on.
    match (largest, entry_failure) {
        (None, _) if n > 0 => {
            return Err(VerifyFailure::at(0, "no signed checkpoint covers the log"));
        }
        (Some(largest), failure)
            if largest < n && failure.as_ref().is_none_or(|f| largest <= f.position) =>
        {
            return Err(beyond_last_checkpoint(largest, n));
        }
        (_, Some(failure)) => return Err(failure.into_failure(entries.len(), stored_leaf_hashes)),
        _ => {}
    }
    if let Some(largest) = largest.filter(|&s| s > n) {
        return Err(VerifyFailure::at(
            n,
            format!(
                "the log has {n} entries but a checkpoint signed by this node covers {largest}: \
                 entries were removed from the end"
            ),
        ));
    }
    if let Some(stored) = stored_leaf_hashes.filter(|s| s.len() > entries.len()) {
        return Err(VerifyFailure::at(
            n,
            format!(
                "the log has {n} entries but {} stored leaf hashes: entries were removed",
                stored.len()
            ),
        ));
    }

    let root = prefix.root(n).ok_or_else(internal_failure)?;
    if let Some(note) = against {
        check_extends(note, key, &hashed.leaves, &root)?;
    }
    Ok(Verified {
        size: n,
        root,
        checkpoints_checked: checkpoints.len(),
    })
}

/// Opens every checkpoint with the log's key and sorts the tree heads by size. A database may
/// hold many checkpoints, and each costs an Ed25519 verification, so they are shared out among
/// the cores too.
fn open_checkpoints(
    checkpoints: &[&str],
    key: &VerifierKey,
) -> Result<Vec<TreeHead>, VerifyFailure> {
    let total = checkpoints.len();
    let open = |offset: usize, notes: &[&str]| -> Result<Vec<TreeHead>, VerifyFailure> {
        notes
            .iter()
            .enumerate()
            .map(|(i, note)| {
                Checkpoint::open(note, key).map(|c| c.head).map_err(|e| {
                    VerifyFailure::general(format!(
                        "checkpoint {} of {total} does not verify with the key `{}`: {e}",
                        offset + i + 1,
                        key.name()
                    ))
                })
            })
            .collect()
    };
    let workers = workers_for(total, CHECKPOINT_PARALLEL_THRESHOLD);
    let mut heads = if workers == 1 {
        open(0, checkpoints)?
    } else {
        let chunk = total.div_ceil(workers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = checkpoints
                .chunks(chunk)
                .enumerate()
                .map(|(k, part)| scope.spawn(move || open(k * chunk, part)))
                .collect();
            let mut heads = Vec::with_capacity(total);
            // Joined in order, so the first checkpoint that fails is the one reported.
            for handle in handles {
                heads.extend(handle.join().unwrap_or_else(|_| Err(internal_failure()))?);
            }
            Ok::<_, VerifyFailure>(heads)
        })?
    };
    heads.sort_by_key(|h| h.size);
    Ok(heads)
}

/// How many threads to share `items` among: one below `threshold`, where starting threads
/// costs more than it saves, else one per core.
fn workers_for(items: usize, threshold: usize) -> usize {
    if items < threshold {
        1
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 16)
    }
}

/// Compares the root over the first `s` leaves with every checkpoint of size `s <= sound`, in one
/// pass in increasing size.
fn check_checkpoint_roots(
    heads: &[TreeHead],
    prefix: &mut PrefixRoots<'_>,
    sound: u64,
) -> Result<(), VerifyFailure> {
    // The largest size whose checkpoints all matched: a mismatch is blamed on the batch after it.
    let mut good = 0u64;
    for group in heads.chunk_by(|a, b| a.size == b.size) {
        let Some(size) = group.first().map(|h| h.size) else {
            continue;
        };
        if size > sound {
            break;
        }
        let root = prefix.root(size).ok_or_else(internal_failure)?;
        let matching = group.iter().filter(|h| h.root == root).count();
        if matching == group.len() {
            good = size;
            continue;
        }
        let problem = if size == 0 {
            "a checkpoint signed for size 0 carries a root other than the empty tree's".to_owned()
        } else if matching > 0 {
            format!(
                "the node signed different roots for size {size}, and the entries match only \
                 one: the log was forked"
            )
        } else {
            format!(
                "entries {good} to {} do not hash to the root signed for size {size}: one of them \
                 was altered, or entries were inserted, deleted or reordered",
                size - 1
            )
        };
        return Err(VerifyFailure::at(good, problem));
    }
    Ok(())
}

fn internal_failure() -> VerifyFailure {
    VerifyFailure::general("the verifier's own bookkeeping failed: please report this as a bug")
}

/// Leaves are grouped in aligned blocks of this many. The workers hash each complete block into
/// the root of its perfect subtree, so the sequential pass that computes checkpoint roots takes
/// one hash per block, and at most a block's worth of leaves per checkpoint.
const BLOCK: usize = 256;

/// The leaf hashes, and the roots of the complete aligned blocks of leaves.
struct Hashed {
    leaves: Vec<Hash>,
    blocks: Vec<Hash>,
}

/// Roots of ever longer prefixes of the log, asked for in increasing size.
struct PrefixRoots<'a> {
    hashed: &'a Hashed,
    /// A frontier over the block roots. Each block is a perfect, aligned subtree, so its nodes
    /// are exactly the frontier nodes of the leaves above the block level.
    blocks: Frontier,
    /// A frontier over the leaves of the partial block after `blocks`, kept between calls so
    /// that many checkpoints within one block cost one push each.
    tail: Frontier,
}

impl<'a> PrefixRoots<'a> {
    fn new(hashed: &'a Hashed) -> Self {
        Self {
            hashed,
            blocks: Frontier::new(),
            tail: Frontier::new(),
        }
    }

    /// The root over the first `size` leaves; `None` if asked out of order or beyond the leaves.
    fn root(&mut self, size: u64) -> Option<Hash> {
        let full = size / BLOCK as u64;
        if self.blocks.size() < full {
            while self.blocks.size() < full {
                let next = self
                    .hashed
                    .blocks
                    .get(usize::try_from(self.blocks.size()).ok()?)?;
                self.blocks.push(*next);
            }
            self.tail = Frontier::new();
        }
        if self.blocks.size() != full {
            return None;
        }
        let start = usize::try_from(full).ok()? * BLOCK;
        let have = start + usize::try_from(self.tail.size()).ok()?;
        let end = usize::try_from(size).ok()?;
        for leaf in self.hashed.leaves.get(have..end)? {
            self.tail.push(*leaf);
        }
        // The frontier of the prefix: the block-level nodes, then those of the partial block.
        let mut nodes = self.blocks.nodes().to_vec();
        nodes.extend_from_slice(self.tail.nodes());
        Frontier::from_parts(size, nodes).map(|f| f.root())
    }
}

fn beyond_last_checkpoint(largest: u64, n: u64) -> VerifyFailure {
    VerifyFailure::at(
        largest,
        format!(
            "entries beyond the last signed checkpoint (size {largest}, the log has {n}): every \
             group commit signs one, so these were added outside the writer"
        ),
    )
}

/// Proves by a consistency proof that the log of `leaves` (with `root`) extends `note`.
fn check_extends(
    note: &str,
    key: &VerifierKey,
    leaves: &[Hash],
    root: &Hash,
) -> Result<(), VerifyFailure> {
    let seen = Checkpoint::open(note, key).map_err(|e| {
        VerifyFailure::general(format!(
            "the checkpoint seen earlier does not verify with the key `{}`: {e}",
            key.name()
        ))
    })?;
    let n = leaves.len() as u64;
    let old = seen.head.size;
    if old > n {
        return Err(VerifyFailure::general(format!(
            "the log is shorter than the checkpoint seen earlier: it has {n} entries, the \
             checkpoint covers {old}: truncated or forked"
        )));
    }
    // The proof is produced from our own leaves and then checked as an outside verifier would,
    // so the same RFC 9162 check that a peer runs is the one that decides here.
    let proof = usize::try_from(old)
        .ok()
        .and_then(|old| merkle::consistency_proof(leaves, old));
    let extends = proof
        .is_some_and(|proof| merkle::verify_consistency(old, n, &seen.head.root, root, &proof));
    if !extends {
        return Err(VerifyFailure::general(format!(
            "the current log does not extend the checkpoint seen earlier (size {old}): it was \
             rewritten"
        )));
    }
    Ok(())
}

/// What is wrong with one entry.
#[derive(Debug)]
enum EntryProblem {
    Undecodable(EntryError),
    /// The entry says it is entry `claimed`, a later index: entries are missing or moved.
    ClaimsLater(u64),
    /// The entry says it is entry `claimed`, which an earlier position also holds: one of the
    /// two was inserted (`inserted` is the one the checkpoints single out, if they do).
    Duplicate {
        claimed: u64,
        at: u64,
        inserted: Option<u64>,
    },
    NoStoredLeafHash,
    LeafHashDiffers,
    Internal,
}

/// The first entry that fails the per-entry checks.
#[derive(Debug)]
struct EntryFailure {
    position: u64,
    problem: EntryProblem,
}

impl EntryFailure {
    fn into_failure(self, entries: usize, stored: Option<&[Hash]>) -> VerifyFailure {
        let problem = match self.problem {
            EntryProblem::Undecodable(e) => format!("the stored bytes are not a valid entry: {e}"),
            EntryProblem::ClaimsLater(claimed) => format!(
                "the entry stored here says it is entry {claimed}: an entry was deleted here or \
                 entries were reordered"
            ),
            EntryProblem::Duplicate {
                claimed,
                at,
                inserted: Some(_),
            } => format!(
                "the entries at {claimed} and {at} both say they are entry {claimed}, and the \
                 signed checkpoints show that this one was inserted"
            ),
            EntryProblem::Duplicate {
                claimed,
                at,
                inserted: None,
            } => format!(
                "the entries at {claimed} and {at} both say they are entry {claimed}: one of them \
                 was inserted or copied"
            ),
            EntryProblem::NoStoredLeafHash => format!(
                "there is no stored leaf hash for it ({} leaf hashes for {entries} entries)",
                stored.map_or(0, <[Hash]>::len)
            ),
            EntryProblem::LeafHashDiffers => {
                "its leaf hash differs from the stored one: the entry or its hash was altered"
                    .to_owned()
            }
            EntryProblem::Internal => "the verifier failed while checking this range".to_owned(),
        };
        VerifyFailure::at(self.position, problem)
    }
}

/// Decodes, checks and hashes every entry, and hashes every complete block of leaves. Returns
/// the hashes and the first entry that fails; hashes after it may be left unfilled.
fn check_entries(entries: &[&[u8]], stored: Option<&[Hash]>) -> (Hashed, Option<EntryFailure>) {
    let mut hashed = Hashed {
        leaves: vec![[0u8; 32]; entries.len()],
        blocks: vec![[0u8; 32]; entries.len() / BLOCK],
    };
    let workers = workers_for(entries.len(), PARALLEL_THRESHOLD);
    if workers == 1 {
        let failure = check_range(0, entries, stored, &mut hashed.leaves, &mut hashed.blocks);
        return (hashed, failure);
    }
    // Chunks are whole blocks, so that each block lies within one worker's chunk.
    let chunk = entries.len().div_ceil(workers).div_ceil(BLOCK) * BLOCK;
    let failure = std::thread::scope(|scope| {
        let mut blocks_left: &mut [Hash] = &mut hashed.blocks;
        let mut handles = Vec::with_capacity(workers);
        for (k, (part, out)) in entries
            .chunks(chunk)
            .zip(hashed.leaves.chunks_mut(chunk))
            .enumerate()
        {
            let count = (part.len() / BLOCK).min(blocks_left.len());
            let (blocks, rest) = std::mem::take(&mut blocks_left)
                .split_at_mut_checked(count)
                .unwrap_or_default();
            blocks_left = rest;
            let offset = k * chunk;
            handles.push((
                offset,
                scope.spawn(move || check_range(offset, part, stored, out, blocks)),
            ));
        }
        // Each worker stops at the first failure in its chunk, and the chunks are in index order,
        // so the first chunk that failed holds the first failure of the whole log.
        let mut first = None;
        for (offset, handle) in handles {
            let result = handle.join().unwrap_or(Some(EntryFailure {
                position: offset as u64,
                problem: EntryProblem::Internal,
            }));
            if first.is_none() {
                first = result;
            }
        }
        first
    });
    (hashed, failure)
}

/// Checks one chunk starting at position `offset`, filling its leaf hashes and block roots.
fn check_range(
    offset: usize,
    entries: &[&[u8]],
    stored: Option<&[Hash]>,
    out: &mut [Hash],
    blocks: &mut [Hash],
) -> Option<EntryFailure> {
    let (filled, failure) = check_each(offset, entries, stored, out);
    // The blocks before a failure are still hashed: the checkpoints within them are compared.
    let done = out.get(..filled).unwrap_or_default();
    for (block, root) in done.chunks_exact(BLOCK).zip(blocks.iter_mut()) {
        *root = merkle::root(block);
    }
    failure
}

/// Returns how many leaf hashes were filled in, and the first failure.
fn check_each(
    offset: usize,
    entries: &[&[u8]],
    stored: Option<&[Hash]>,
    out: &mut [Hash],
) -> (usize, Option<EntryFailure>) {
    for (i, (bytes, slot)) in entries.iter().zip(out.iter_mut()).enumerate() {
        let position = offset + i;
        let fail = |problem| {
            (
                i,
                Some(EntryFailure {
                    position: position as u64,
                    problem,
                }),
            )
        };
        let claimed = match entry::check(bytes) {
            Ok(idx) => idx,
            Err(e) => return fail(EntryProblem::Undecodable(e)),
        };
        if claimed > position as u64 {
            return fail(EntryProblem::ClaimsLater(claimed));
        }
        if claimed < position as u64 {
            return fail(EntryProblem::Duplicate {
                claimed,
                at: position as u64,
                inserted: None,
            });
        }
        let leaf = merkle::leaf_hash(bytes);
        match stored.map(|s| s.get(position)) {
            Some(None) => return fail(EntryProblem::NoStoredLeafHash),
            Some(Some(hash)) if *hash != leaf => return fail(EntryProblem::LeafHashDiffers),
            _ => {}
        }
        *slot = leaf;
    }
    (entries.len().min(out.len()), None)
}

/// Two positions claim the same index, so one entry was inserted: the earlier holder (a forged
/// entry put in front of the real one) or the later (a copy, or an entry put after the real one).
/// The signed checkpoints decide: without the inserted entry the leaves match the first
/// checkpoint beyond it. Only runs on the failure path, so its extra hashing costs nothing when
/// the log is sound.
fn locate_insertion(failure: EntryFailure, entries: &[&[u8]], heads: &[TreeHead]) -> EntryFailure {
    let EntryProblem::Duplicate { claimed, at, .. } = failure.problem else {
        return failure;
    };
    let removing_fixes = |skip: u64| -> bool {
        // After removing one entry, a checkpoint of size `s` covers the first `s + 1` positions.
        let Some(head) = heads
            .iter()
            .find(|h| h.size > skip && h.size < entries.len() as u64)
        else {
            return false;
        };
        let mut frontier = Frontier::new();
        for (position, bytes) in entries.iter().enumerate() {
            if frontier.size() == head.size {
                break;
            }
            if position as u64 != skip {
                frontier.push(merkle::leaf_hash(bytes));
            }
        }
        heads
            .iter()
            .filter(|h| h.size == head.size)
            .any(|h| h.root == frontier.root())
    };
    let (earlier, later) = (removing_fixes(claimed), removing_fixes(at));
    let (position, inserted) = match (earlier, later) {
        (true, false) => (claimed, Some(claimed)),
        (false, true) => (at, Some(at)),
        _ => (at, None),
    };
    EntryFailure {
        position,
        problem: EntryProblem::Duplicate {
            claimed,
            at,
            inserted,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::checkpoint::{Checkpoint, TreeHead};
    use crate::audit::entry::{AuditRecord, Decision, encode};
    use crate::signed_note::{NoteSigner, generate_ed25519_pkcs8};

    pub(crate) const ORIGIN: &str = "brobygger.test/herning-kommune/audit";

    /// A record of about 150 bytes once encoded; `variant` lets a test forge other content.
    pub(crate) fn record(i: u64, variant: &str) -> AuditRecord {
        AuditRecord {
            time: format!("2026-11-22T12:{:02}:{:02}.000Z", (i / 60) % 60, i % 60),
            action: format!("local.authentication{variant}"),
            decision: Some(if i.is_multiple_of(3) {
                Decision::Deny
            } else {
                Decision::Permit
            }),
            reason: (i.is_multiple_of(3)).then(|| "token-expired".to_owned()),
            peer: Some("red-barnet".to_owned()),
            message_type: Some("ping".to_owned()),
            ..AuditRecord::default()
        }
    }

    pub(crate) fn signed(signer: &NoteSigner, entries: &[Vec<u8>]) -> String {
        let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
        Checkpoint {
            origin: ORIGIN.to_owned(),
            head: TreeHead {
                size: entries.len() as u64,
                root: merkle::root(&leaves),
            },
        }
        .sign(signer)
        .unwrap()
    }

    /// A log as the writer leaves it: entries and one signed checkpoint per group commit.
    pub(crate) struct TestLog {
        /// The node's key material, kept so that a test can rewrite the log with the same key.
        pub pkcs8: Vec<u8>,
        pub signer: NoteSigner,
        pub entries: Vec<Vec<u8>>,
        /// The checkpoint signed after each batch, smallest first.
        pub checkpoints: Vec<String>,
    }

    impl TestLog {
        pub fn new(n: u64, batch: u64) -> Self {
            Self::build(generate_ed25519_pkcs8().unwrap(), n, batch, |_| "")
        }

        /// Another log signed with the same key, `variant(i)` forging the content of entry `i`.
        pub fn rewrite(&self, n: u64, batch: u64, variant: impl Fn(u64) -> &'static str) -> Self {
            Self::build(self.pkcs8.clone(), n, batch, variant)
        }

        fn build(
            pkcs8: Vec<u8>,
            n: u64,
            batch: u64,
            variant: impl Fn(u64) -> &'static str,
        ) -> Self {
            let signer = NoteSigner::from_pkcs8(ORIGIN, &pkcs8).unwrap();
            let mut entries = Vec::new();
            let mut checkpoints = Vec::new();
            let mut frontier = Frontier::new();
            for i in 0..n {
                let bytes = encode(&record(i, variant(i)), i, 1).unwrap();
                frontier.push(merkle::leaf_hash(&bytes));
                entries.push(bytes);
                if (i + 1).is_multiple_of(batch) || i + 1 == n {
                    let checkpoint = Checkpoint {
                        origin: ORIGIN.to_owned(),
                        head: TreeHead {
                            size: i + 1,
                            root: frontier.root(),
                        },
                    };
                    checkpoints.push(checkpoint.sign(&signer).unwrap());
                }
            }
            Self {
                pkcs8,
                signer,
                entries,
                checkpoints,
            }
        }

        pub fn key(&self) -> &VerifierKey {
            self.signer.verifier_key()
        }

        /// The checkpoint of the given size.
        pub fn checkpoint(&self, size: u64) -> &str {
            let prefix = format!("{ORIGIN}\n{size}\n");
            self.checkpoints
                .iter()
                .find(|c| c.starts_with(&prefix))
                .unwrap()
        }
    }

    pub(crate) fn leaves(entries: &[Vec<u8>]) -> Vec<Hash> {
        entries.iter().map(|e| merkle::leaf_hash(e)).collect()
    }

    fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
        items.iter().map(Vec::as_slice).collect()
    }

    /// Verifies `entries` with the log's checkpoints, (a) with the leaf hashes a naive tamperer
    /// left as they were, (b) with leaf hashes recomputed to match, and (c) with none.
    fn verify_three_ways(
        log: &TestLog,
        entries: &[Vec<u8>],
    ) -> [Result<Verified, VerifyFailure>; 3] {
        let original = leaves(&log.entries);
        let recomputed = leaves(entries);
        let notes: Vec<&str> = log.checkpoints.iter().map(String::as_str).collect();
        let entries = refs(entries);
        [
            verify_log(&entries, Some(&original), &notes, log.key(), None),
            verify_log(&entries, Some(&recomputed), &notes, log.key(), None),
            verify_log(&entries, None, &notes, log.key(), None),
        ]
    }

    fn index(result: &Result<Verified, VerifyFailure>) -> Option<u64> {
        result.as_ref().unwrap_err().index
    }

    #[test]
    fn a_clean_log_verifies() {
        let log = TestLog::new(600, 50);
        let root = merkle::root(&leaves(&log.entries));
        for result in verify_three_ways(&log, &log.entries) {
            assert_eq!(
                result.unwrap(),
                Verified {
                    size: 600,
                    root,
                    checkpoints_checked: 12
                }
            );
        }
        // Checkpoints may come in any order, and the latest alone is enough.
        let mut notes: Vec<&str> = log.checkpoints.iter().map(String::as_str).collect();
        notes.reverse();
        notes.swap(3, 7);
        let entries = refs(&log.entries);
        assert!(verify_log(&entries, None, &notes, log.key(), None).is_ok());
        assert!(verify_log(&entries, None, &[log.checkpoint(600)], log.key(), None).is_ok());
    }

    #[test]
    fn an_empty_log_verifies_and_a_log_needs_a_checkpoint() {
        let log = TestLog::new(3, 10);
        let verified = verify_log(&[], None, &[], log.key(), None).unwrap();
        assert_eq!(verified.size, 0);
        assert_eq!(verified.root, merkle::empty_root());
        let entries = refs(&log.entries);
        assert_eq!(
            verify_log(&entries, None, &[], log.key(), None),
            Err(VerifyFailure::at(0, "no signed checkpoint covers the log"))
        );
    }

    #[test]
    fn a_changed_byte_is_named() {
        let log = TestLog::new(600, 50);
        // A change that still decodes: the stale leaf hash names the entry; with the hash
        // recomputed only the checkpoint catches it, naming the start of its batch.
        let mut entries = log.entries.clone();
        let text = String::from_utf8(entries[123].clone()).unwrap();
        entries[123] = text.replace("red-barnet", "red-barneT").into_bytes();
        let [stale, recomputed, none] = verify_three_ways(&log, &entries);
        assert_eq!(index(&stale), Some(123));
        assert_eq!(index(&recomputed), Some(100));
        assert_eq!(index(&none), Some(100));
        assert!(recomputed.unwrap_err().to_string().starts_with(
            "entry 100: entries 100 to 149 do not hash to the root signed for size 150"
        ));
        // A change that breaks the encoding is named by decoding, whatever the hashes say.
        let mut entries = log.entries.clone();
        entries[123][0] = b'[';
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(123));
        }
    }

    #[test]
    fn a_deleted_entry_is_named() {
        let log = TestLog::new(600, 50);
        let mut entries = log.entries.clone();
        entries.remove(123);
        for result in verify_three_ways(&log, &entries) {
            let failure = result.unwrap_err();
            assert_eq!(failure.index, Some(123), "{failure}");
            assert!(
                failure.problem.contains("says it is entry 124"),
                "{failure}"
            );
        }
        // The first entry and the last.
        let mut entries = log.entries.clone();
        entries.remove(0);
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(0));
        }
        let mut entries = log.entries.clone();
        entries.remove(599);
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(599));
        }
    }

    #[test]
    fn an_inserted_entry_is_named() {
        let log = TestLog::new(600, 50);
        // A forged entry that claims the index it sits at, in front of the real one.
        let forged = encode(&record(123, ".forged"), 123, 1).unwrap();
        let mut entries = log.entries.clone();
        entries.insert(123, forged.clone());
        for result in verify_three_ways(&log, &entries) {
            let failure = result.unwrap_err();
            assert_eq!(failure.index, Some(123), "{failure}");
        }
        // The same forged entry after the real one.
        let mut entries = log.entries.clone();
        entries.insert(124, forged);
        for result in verify_three_ways(&log, &entries) {
            let failure = result.unwrap_err();
            assert_eq!(failure.index, Some(124), "{failure}");
        }
        // A copy of an earlier entry.
        let mut entries = log.entries.clone();
        entries.insert(300, log.entries[17].clone());
        for result in verify_three_ways(&log, &entries) {
            let failure = result.unwrap_err();
            assert_eq!(failure.index, Some(300), "{failure}");
        }
        // An entry with a wrong index, and one appended at the end.
        let mut entries = log.entries.clone();
        entries.insert(123, encode(&record(9, ""), 9999, 1).unwrap());
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(123));
        }
        let mut entries = log.entries.clone();
        entries.push(encode(&record(600, ""), 600, 1).unwrap());
        let notes: Vec<&str> = log.checkpoints.iter().map(String::as_str).collect();
        let failure = verify_log(
            &refs(&entries),
            Some(&leaves(&entries)),
            &notes,
            log.key(),
            None,
        )
        .unwrap_err();
        assert_eq!(failure.index, Some(600));
        assert!(
            failure
                .problem
                .contains("beyond the last signed checkpoint")
        );
    }

    #[test]
    fn swapped_entries_are_named() {
        let log = TestLog::new(600, 50);
        for (a, b) in [(123, 124), (10, 590), (0, 1)] {
            let mut entries = log.entries.clone();
            entries.swap(a, b);
            for result in verify_three_ways(&log, &entries) {
                assert_eq!(index(&result), Some(a as u64));
            }
        }
    }

    #[test]
    fn a_truncated_tail_is_named() {
        let log = TestLog::new(600, 50);
        let entries = log.entries[..595].to_vec();
        for result in verify_three_ways(&log, &entries) {
            let failure = result.unwrap_err();
            assert_eq!(failure.index, Some(595));
            assert_eq!(
                failure.problem,
                "the log has 595 entries but a checkpoint signed by this node covers 600: \
                 entries were removed from the end"
            );
        }
        // Cut at a batch boundary with the later checkpoints removed too, the log is consistent
        // in itself: only a checkpoint that left the node shows it is shorter.
        let entries = refs(&log.entries[..550]);
        let notes: Vec<&str> = log.checkpoints[..11].iter().map(String::as_str).collect();
        assert!(verify_log(&entries, None, &notes, log.key(), None).is_ok());
        let failure =
            verify_log(&entries, None, &notes, log.key(), Some(log.checkpoint(600))).unwrap_err();
        assert_eq!(failure.index, None);
        assert!(
            failure
                .problem
                .starts_with("the log is shorter than the checkpoint seen earlier")
        );
    }

    #[test]
    fn stored_leaf_hashes_must_cover_every_entry() {
        let log = TestLog::new(100, 50);
        let entries = refs(&log.entries);
        let notes: Vec<&str> = log.checkpoints.iter().map(String::as_str).collect();
        let hashes = leaves(&log.entries);
        let failure =
            verify_log(&entries, Some(&hashes[..90]), &notes, log.key(), None).unwrap_err();
        assert_eq!(failure.index, Some(90));
        let mut more = hashes.clone();
        more.push([7; 32]);
        let failure = verify_log(&entries, Some(&more), &notes, log.key(), None).unwrap_err();
        assert_eq!(failure.index, Some(100));
    }

    #[test]
    fn checkpoints_must_verify_and_agree() {
        let log = TestLog::new(100, 50);
        let entries = refs(&log.entries);
        // Signed by another key with the same name, or altered after signing.
        let other = TestLog::new(100, 50);
        let failure =
            verify_log(&entries, None, &[other.checkpoint(100)], log.key(), None).unwrap_err();
        assert_eq!(failure.index, None);
        assert!(
            failure
                .problem
                .starts_with("checkpoint 1 of 1 does not verify")
        );
        let altered = log.checkpoint(100).replacen("\n100\n", "\n99\n", 1);
        assert!(verify_log(&entries, None, &[&altered], log.key(), None).is_err());
        // Two roots signed for one size: the node forked its own log.
        let mut forged_entries = log.entries[..50].to_vec();
        forged_entries[20] = encode(&record(20, ".forged"), 20, 1).unwrap();
        let fork = signed(&log.signer, &forged_entries);
        let notes = [log.checkpoint(50), fork.as_str(), log.checkpoint(100)];
        let failure = verify_log(&entries, None, &notes, log.key(), None).unwrap_err();
        assert_eq!(failure.index, Some(0));
        assert!(failure.problem.contains("forked"), "{failure}");
        // A checkpoint of size 0 must carry the empty root.
        let bogus = Checkpoint {
            origin: ORIGIN.to_owned(),
            head: TreeHead {
                size: 0,
                root: [1; 32],
            },
        }
        .sign(&log.signer)
        .unwrap();
        let notes = [bogus.as_str(), log.checkpoint(100)];
        assert_eq!(
            index(&verify_log(&entries, None, &notes, log.key(), None)),
            Some(0)
        );
    }

    #[test]
    fn many_checkpoints_are_checked_and_the_first_bad_one_is_named() {
        let log = TestLog::new(600, 5);
        let entries = refs(&log.entries);
        let mut notes = log.checkpoints.clone();
        let all: Vec<&str> = notes.iter().map(String::as_str).collect();
        let verified = verify_log(&entries, None, &all, log.key(), None).unwrap();
        assert_eq!(verified.checkpoints_checked, 120);
        notes[99] = notes[99].replacen("\n500\n", "\n501\n", 1);
        notes[110] = notes[110].replacen("\n555\n", "\n556\n", 1);
        let all: Vec<&str> = notes.iter().map(String::as_str).collect();
        let failure = verify_log(&entries, None, &all, log.key(), None).unwrap_err();
        assert!(
            failure
                .problem
                .starts_with("checkpoint 100 of 120 does not verify"),
            "{failure}"
        );
    }

    #[test]
    fn against_an_earlier_checkpoint_of_the_same_log_passes() {
        let log = TestLog::new(600, 50);
        let entries = refs(&log.entries);
        let notes: Vec<&str> = log.checkpoints.iter().map(String::as_str).collect();
        for size in [50, 64, 350, 600] {
            let earlier = if size == 64 {
                signed(&log.signer, &log.entries[..64])
            } else {
                log.checkpoint(size).to_owned()
            };
            verify_log(&entries, None, &notes, log.key(), Some(&earlier)).unwrap();
        }
        let empty = signed(&log.signer, &[]);
        verify_log(&entries, None, &notes, log.key(), Some(&empty)).unwrap();
        // Only a checkpoint by this log's key counts.
        let other = TestLog::new(600, 50);
        let failure = verify_log(
            &entries,
            None,
            &notes,
            log.key(),
            Some(other.checkpoint(50)),
        )
        .unwrap_err();
        assert!(
            failure
                .problem
                .starts_with("the checkpoint seen earlier does not verify")
        );
    }

    #[test]
    fn a_rewritten_log_passes_alone_but_not_against_an_earlier_checkpoint() {
        let log = TestLog::new(600, 50);
        // The operator rewrites entries 300 onwards, recomputes every leaf hash and re-signs
        // every checkpoint with the node's own key: in itself the result is a sound log.
        let rewritten = log.rewrite(600, 50, |i| if i >= 300 { ".rewritten" } else { "" });
        let entries = refs(&rewritten.entries);
        let hashes = leaves(&rewritten.entries);
        let notes: Vec<&str> = rewritten.checkpoints.iter().map(String::as_str).collect();
        verify_log(&entries, Some(&hashes), &notes, log.key(), None).unwrap();
        // A checkpoint from before the rewrite still agrees; one from after it does not.
        verify_log(
            &entries,
            Some(&hashes),
            &notes,
            log.key(),
            Some(log.checkpoint(300)),
        )
        .unwrap();
        for size in [350, 600] {
            let failure = verify_log(
                &entries,
                Some(&hashes),
                &notes,
                log.key(),
                Some(log.checkpoint(size)),
            )
            .unwrap_err();
            assert_eq!(failure.index, None);
            assert_eq!(
                failure.problem,
                format!(
                    "the current log does not extend the checkpoint seen earlier (size {size}): \
                     it was rewritten"
                )
            );
        }
    }

    #[test]
    fn prefix_roots_agree_with_the_recursive_definition() {
        let all: Vec<Hash> = (0..3000u32)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
        let hashed = Hashed {
            blocks: all.chunks_exact(BLOCK).map(merkle::root).collect(),
            leaves: all.clone(),
        };
        let mut prefix = PrefixRoots::new(&hashed);
        let sizes = (0..=1100).chain([1279, 1280, 1281, 2047, 2048, 2049, 2999, 3000]);
        for size in sizes {
            assert_eq!(
                prefix.root(size),
                Some(merkle::root(&all[..size as usize])),
                "{size}"
            );
        }
        // Out of order, or beyond the leaves: refused rather than wrong.
        assert_eq!(prefix.root(10), None);
        assert_eq!(prefix.root(2999), None);
        assert_eq!(PrefixRoots::new(&hashed).root(3001), None);
    }

    /// Large enough for the workers: problems in the second chunk and across the boundary
    /// between chunks (at 10,240 for two workers) are named as in a small log.
    #[test]
    fn problems_are_named_across_worker_chunks() {
        let log = TestLog::new(20_000, 1_000);
        for result in verify_three_ways(&log, &log.entries) {
            result.unwrap();
        }
        let mut entries = log.entries.clone();
        let text = String::from_utf8(entries[10_239].clone()).unwrap();
        entries[10_239] = text.replace("red-barnet", "red-barneT").into_bytes();
        let [stale, recomputed, none] = verify_three_ways(&log, &entries);
        assert_eq!(index(&stale), Some(10_239));
        assert_eq!(index(&recomputed), Some(10_000));
        assert_eq!(index(&none), Some(10_000));
        let mut entries = log.entries.clone();
        entries.swap(10_239, 10_240);
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(10_239));
        }
        let mut entries = log.entries.clone();
        entries.remove(15_000);
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(15_000));
        }
        let mut entries = log.entries.clone();
        entries.insert(
            10_240,
            encode(&record(10_240, ".forged"), 10_240, 1).unwrap(),
        );
        for result in verify_three_ways(&log, &entries) {
            assert_eq!(index(&result), Some(10_240));
        }
    }

    #[test]
    fn failures_display_their_index() {
        assert_eq!(
            VerifyFailure::at(17, "the entry was altered").to_string(),
            "entry 17: the entry was altered"
        );
        assert_eq!(VerifyFailure::general("no index").to_string(), "no index");
    }
}
