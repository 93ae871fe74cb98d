//! Export of the audit log in the C2SP `tlog-tiles` layout, and the offline verification of such
//! an export (`audit export` and `audit verify-export`).
//!
//! An export is a directory an auditor can take away: `checkpoint` (the latest signed checkpoint),
//! the hash tiles `tile/<L>/<N>[.p/<W>]` (height 8, so 256 hashes of 32 bytes to a full tile) and
//! the entry bundles `tile/entries/<N>[.p/<W>]` (each entry a big-endian two-byte length followed
//! by its bytes). Tile indexes are written in three-digit groups, all but the last prefixed `x`,
//! so that no directory grows large. Level-0 tiles hold the leaf hashes; each hash at level
//! `L + 1` is the Merkle tree hash of a full tile at level `L`. Only full tiles have parents.
//!
//! Verification recomputes everything with the same core as `audit verify` (`verify::verify_log`),
//! the level-0 tiles standing in for the stored leaf hashes, and then checks every higher tile
//! against the tiles below it. This module only touches the export directory (std::fs): no
//! database, so it runs on an auditor's machine.

use super::checkpoint::{Checkpoint, CheckpointError, TreeHead};
use super::merkle::{self, Hash};
use super::verify::{Verified, VerifyFailure, verify_log};
use crate::signed_note::VerifierKey;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Hashes (or entries) in a full tile: tiles have height 8.
pub const TILE_WIDTH: usize = 256;
const HASH_BYTES: usize = 32;
/// The largest entry a bundle can carry, given its two-byte length prefix.
const MAX_BUNDLE_ENTRY: usize = u16::MAX as usize;
/// A bundle is read up to twice its largest legitimate size: enough to see entries that were
/// inserted, without letting a hostile export exhaust memory.
const MAX_BUNDLE_BYTES: u64 = 2 * (TILE_WIDTH * (2 + MAX_BUNDLE_ENTRY)) as u64;

#[derive(Debug, thiserror::Error)]
pub enum TilesError {
    #[error("the export directory {0} is not empty")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the checkpoint is malformed: {0}")]
    MalformedCheckpoint(&'static str),
    #[error("the export's checkpoint does not verify: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint covers {checkpoint} entries, but {entries} were given")]
    SizeMismatch { checkpoint: u64, entries: u64 },
    #[error("the entries do not hash to the root the checkpoint signs")]
    RootMismatch,
    #[error("entry {index} has {len} bytes, more than an entry bundle can carry (65,535)")]
    EntryTooLarge { index: u64, len: usize },
    #[error("`{path}` is missing")]
    Missing { path: String, first_index: u64 },
    #[error("`{path}` is malformed: {problem}")]
    Malformed {
        path: String,
        first_index: u64,
        problem: String,
    },
}

impl TilesError {
    /// The first entry index the error concerns, when one can be named.
    pub fn index(&self) -> Option<u64> {
        match self {
            Self::Missing { first_index, .. } | Self::Malformed { first_index, .. } => {
                Some(*first_index)
            }
            Self::EntryTooLarge { index, .. } => Some(*index),
            _ => None,
        }
    }
}

impl From<TilesError> for VerifyFailure {
    fn from(error: TilesError) -> Self {
        match error.index() {
            Some(index) => VerifyFailure::at(index, error.to_string()),
            None => VerifyFailure::general(error.to_string()),
        }
    }
}

/// What `export` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// The tree size, equal to the checkpoint's.
    pub size: u64,
    /// Hash tiles written, all levels together.
    pub hash_tiles: usize,
    pub entry_bundles: usize,
    /// Bytes written, the checkpoint included.
    pub bytes: u64,
}

/// An export as read back, its checkpoint verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportContents {
    pub checkpoint_note: String,
    pub checkpoint: Checkpoint,
    /// The entries of all bundles, in index order.
    pub entries: Vec<Vec<u8>>,
    /// The hashes of each tile level, concatenated in index order: `levels[0]` holds the leaf
    /// hashes and `levels[l][j]` the root of the `256^l` leaves from `j * 256^l`.
    pub levels: Vec<Vec<Hash>>,
}

impl ExportContents {
    /// The leaf hashes of the level-0 tiles.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }
}

/// The path of hash tile `index` at `level`, `width` hashes wide (256 for a full tile), relative
/// to the export directory: e.g. `tile/0/x001/x234/067` or `tile/2/000.p/1`.
pub fn tile_path(level: u8, index: u64, width: usize) -> String {
    format!(
        "tile/{level}/{}{}",
        encode_index(index),
        width_suffix(width)
    )
}

/// The path of entry bundle `index`, holding `width` entries: e.g. `tile/entries/x001/067.p/9`.
pub fn bundle_path(index: u64, width: usize) -> String {
    format!(
        "tile/entries/{}{}",
        encode_index(index),
        width_suffix(width)
    )
}

/// Three digits at a time, so a directory holds at most a thousand `xNNN`, `NNN` and `NNN.p`.
fn encode_index(mut index: u64) -> String {
    let mut encoded = format!("{:03}", index % 1000);
    while index >= 1000 {
        index /= 1000;
        encoded = format!("x{:03}/{encoded}", index % 1000);
    }
    encoded
}

fn width_suffix(width: usize) -> String {
    if width == TILE_WIDTH {
        String::new()
    } else {
        format!(".p/{width}")
    }
}

/// The hashes of every tile level above the leaves: each is the root of a full tile below.
/// A partial tile has no parent, so it is left out of the level above.
fn tile_levels(leaves: Vec<Hash>) -> Vec<Vec<Hash>> {
    let mut levels = Vec::new();
    let mut current = leaves;
    while !current.is_empty() {
        let above: Vec<Hash> = current.chunks_exact(TILE_WIDTH).map(merkle::root).collect();
        levels.push(current);
        current = above;
    }
    levels
}

/// How many hashes each tile level of a tree of `size` leaves holds: `floor(size / 256^l)`.
fn level_lengths(size: u64) -> Vec<u64> {
    let mut lengths = Vec::new();
    let mut length = size;
    while length > 0 {
        lengths.push(length);
        length /= TILE_WIDTH as u64;
    }
    lengths
}

/// The tree head a checkpoint claims, read without checking its signature: `export` is handed
/// the note the node itself just signed and only needs to confirm it describes these entries.
fn claimed_head(note: &str) -> Result<TreeHead, TilesError> {
    let mut lines = note.lines().skip(1);
    let size = lines
        .next()
        .filter(|l| *l == "0" || (!l.starts_with('0') && l.bytes().all(|b| b.is_ascii_digit())))
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or(TilesError::MalformedCheckpoint(
            "the size line is not a decimal number",
        ))?;
    let root = lines
        .next()
        .and_then(|l| BASE64.decode(l).ok())
        .and_then(|raw| <Hash>::try_from(raw).ok())
        .ok_or(TilesError::MalformedCheckpoint(
            "the root line is not a base64 SHA-256 hash",
        ))?;
    Ok(TreeHead { size, root })
}

fn join(dir: &Path, relative: &str) -> PathBuf {
    // The relative paths use `/`; joining component by component keeps them portable.
    relative
        .split('/')
        .fold(dir.to_path_buf(), |path, part| path.join(part))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TilesError + '_ {
    move |source| TilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file; refusing to overwrite means two exports into one directory cannot mix.
fn write_new(dir: &Path, relative: &str, bytes: &[u8]) -> Result<u64, TilesError> {
    let path = join(dir, relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all(bytes).map_err(io_error(&path))?;
    Ok(bytes.len() as u64)
}

/// Writes the tlog-tiles export of `entries` (the whole log) into `dir`, which must be empty or
/// not exist yet: all hash tiles, the entry bundles and `checkpoint`. The checkpoint must be
/// the one signed for exactly these entries.
pub fn export(
    dir: &Path,
    entries: &[&[u8]],
    checkpoint_note: &str,
) -> Result<ExportSummary, TilesError> {
    let head = claimed_head(checkpoint_note)?;
    let size = entries.len() as u64;
    if head.size != size {
        return Err(TilesError::SizeMismatch {
            checkpoint: head.size,
            entries: size,
        });
    }
    let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    if merkle::root(&leaves) != head.root {
        return Err(TilesError::RootMismatch);
    }
    // Checked before anything is written, so an oversize entry leaves no half-written export.
    if let Some((index, entry)) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() > MAX_BUNDLE_ENTRY)
    {
        return Err(TilesError::EntryTooLarge {
            index: index as u64,
            len: entry.len(),
        });
    }

    match fs::read_dir(dir) {
        Ok(mut listing) => {
            if listing.next().is_some() {
                return Err(TilesError::NotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        Err(e) => return Err(io_error(dir)(e)),
    }

    let mut summary = ExportSummary {
        size,
        hash_tiles: 0,
        entry_bundles: 0,
        bytes: 0,
    };
    for (index, bundle) in entries.chunks(TILE_WIDTH).enumerate() {
        let mut bytes = Vec::with_capacity(bundle.iter().map(|e| e.len() + 2).sum());
        for entry in bundle {
            let len = u16::try_from(entry.len()).unwrap_or(u16::MAX);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(entry);
        }
        summary.bytes += write_new(dir, &bundle_path(index as u64, bundle.len()), &bytes)?;
        summary.entry_bundles += 1;
    }
    for (level, hashes) in tile_levels(leaves).iter().enumerate() {
        let level = u8::try_from(level).unwrap_or(u8::MAX);
        for (index, tile) in hashes.chunks(TILE_WIDTH).enumerate() {
            let bytes = tile.concat();
            summary.bytes += write_new(dir, &tile_path(level, index as u64, tile.len()), &bytes)?;
            summary.hash_tiles += 1;
        }
    }
    // The checkpoint is written last, so an interrupted export has none and cannot pass for
    // a complete one.
    summary.bytes += write_new(dir, "checkpoint", checkpoint_note.as_bytes())?;
    Ok(summary)
}

/// Reads at most `limit` bytes of a file of the export; `None` if it is longer.
fn read_limited(
    dir: &Path,
    relative: &str,
    limit: u64,
    first_index: u64,
) -> Result<Option<Vec<u8>>, TilesError> {
    let path = join(dir, relative);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TilesError::Missing {
                path: relative.to_owned(),
                first_index,
            });
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(&path))?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// A bundle whose entry count differs from the width its name gives.
struct BundleShape {
    path: String,
    first_index: u64,
    expected: usize,
    found: usize,
}

impl From<BundleShape> for TilesError {
    fn from(shape: BundleShape) -> Self {
        TilesError::Malformed {
            path: shape.path,
            first_index: shape.first_index + shape.expected.min(shape.found) as u64,
            problem: format!(
                "it holds {} entries, its name says {}",
                shape.found, shape.expected
            ),
        }
    }
}

/// Reads an export. The bundles are read as they are, even when one holds more or fewer entries
/// than its name says, so that the verifier can name the inserted or deleted entry; the first
/// such bundle is returned beside the contents.
fn read(
    dir: &Path,
    key: &VerifierKey,
) -> Result<(ExportContents, Option<BundleShape>), TilesError> {
    let note_bytes = read_limited(dir, "checkpoint", 64 * 1024, 0)?.ok_or(
        TilesError::MalformedCheckpoint("the checkpoint file is larger than 64 KiB"),
    )?;
    let checkpoint_note = String::from_utf8(note_bytes)
        .map_err(|_| TilesError::MalformedCheckpoint("the checkpoint is not UTF-8"))?;
    let checkpoint = Checkpoint::open(&checkpoint_note, key)?;
    let size = checkpoint.head.size;

    let mut entries = Vec::new();
    let mut shape = None;
    let width = TILE_WIDTH as u64;
    for index in 0..size.div_ceil(width) {
        let first_index = index * width;
        let expected = usize::try_from((size - first_index).min(width)).unwrap_or(TILE_WIDTH);
        let path = bundle_path(index, expected);
        let bytes = read_limited(dir, &path, MAX_BUNDLE_BYTES, first_index)?.ok_or_else(|| {
            TilesError::Malformed {
                path: path.clone(),
                first_index,
                problem: "it is far larger than a bundle can be".to_owned(),
            }
        })?;
        let found = parse_bundle(&bytes, &mut entries).map_err(|parsed| TilesError::Malformed {
            path: path.clone(),
            first_index: first_index + parsed as u64,
            problem: format!("it ends inside entry {}", first_index + parsed as u64),
        })?;
        if found != expected && shape.is_none() {
            shape = Some(BundleShape {
                path,
                first_index,
                expected,
                found,
            });
        }
    }

    let mut levels = Vec::new();
    for (level, length) in level_lengths(size).into_iter().enumerate() {
        let level = u8::try_from(level).unwrap_or(u8::MAX);
        let span = width.pow(u32::from(level));
        let mut hashes = Vec::new();
        for index in 0..length.div_ceil(width) {
            let tile_width = usize::try_from((length - index * width).min(width)).unwrap_or(0);
            let path = tile_path(level, index, tile_width);
            let first_index = index * width * span;
            let expected = tile_width * HASH_BYTES;
            let bytes = read_limited(dir, &path, expected as u64, first_index)?
                .filter(|b| b.len() == expected)
                .ok_or_else(|| TilesError::Malformed {
                    path: path.clone(),
                    first_index,
                    problem: format!("a tile of {tile_width} hashes has {expected} bytes"),
                })?;
            hashes.extend(
                bytes
                    .chunks_exact(HASH_BYTES)
                    .filter_map(|h| <Hash>::try_from(h).ok()),
            );
        }
        levels.push(hashes);
    }

    Ok((
        ExportContents {
            checkpoint_note,
            checkpoint,
            entries,
            levels,
        },
        shape,
    ))
}

/// Appends the entries of one bundle; returns how many, or on a truncated bundle how many
/// complete entries came before the break.
fn parse_bundle(mut bytes: &[u8], entries: &mut Vec<Vec<u8>>) -> Result<usize, usize> {
    let mut count = 0;
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
            return Err(count);
        };
        let len = usize::from(u16::from_be_bytes(*len));
        let Some((entry, rest)) = rest.split_at_checked(len) else {
            return Err(count);
        };
        entries.push(entry.to_vec());
        bytes = rest;
        count += 1;
    }
    Ok(count)
}

/// Reads an export: the checkpoint (which must verify with `key`), every entry bundle up to its
/// size, and every hash tile. A bundle holding another number of entries than its name says is
/// an error here; `verify_export` instead reads on, to name the entry concerned.
pub fn read_export(dir: &Path, key: &VerifierKey) -> Result<ExportContents, TilesError> {
    let (contents, shape) = read(dir, key)?;
    match shape {
        Some(shape) => Err(shape.into()),
        None => Ok(contents),
    }
}

/// Verifies an export offline: the checkpoint signature, every entry, every leaf hash and the
/// root (with `verify::verify_log`, the level-0 tiles as the stored leaf hashes), optionally a
/// consistency proof from a checkpoint seen earlier, the shape of every bundle, and every
/// higher-level tile hash against the tile below it.
pub fn verify_export(
    dir: &Path,
    key: &VerifierKey,
    against: Option<&str>,
) -> Result<Verified, VerifyFailure> {
    let (contents, shape) = read(dir, key)?;
    let entries: Vec<&[u8]> = contents.entries.iter().map(Vec::as_slice).collect();
    let verified = verify_log(
        &entries,
        Some(contents.leaf_hashes()),
        &[&contents.checkpoint_note],
        key,
        against,
    )?;
    // An entry moved from one bundle into the next leaves the sequence intact, which is why
    // this comes after the entries were verified: it still is not a valid export.
    if let Some(shape) = shape {
        return Err(TilesError::from(shape).into());
    }
    check_higher_tiles(&contents.levels)?;
    Ok(verified)
}

/// Every hash at level `l + 1` must be the root of the full tile below it.
fn check_higher_tiles(levels: &[Vec<Hash>]) -> Result<(), VerifyFailure> {
    let width = TILE_WIDTH as u64;
    for (level, pair) in levels.windows(2).enumerate() {
        let [below, above] = pair else {
            continue;
        };
        let level = u8::try_from(level).unwrap_or(u8::MAX);
        let above_len = above.len() as u64;
        for (j, (tile, hash)) in below.chunks_exact(TILE_WIDTH).zip(above).enumerate() {
            if merkle::root(tile) == *hash {
                continue;
            }
            let j = j as u64;
            let parent_index = j / width;
            let parent_width = usize::try_from((above_len - parent_index * width).min(width))
                .unwrap_or(TILE_WIDTH);
            return Err(VerifyFailure::at(
                j * width.pow(u32::from(level) + 1),
                format!(
                    "hash {} of `{}` is not the hash of `{}` below it: the tile was altered",
                    j % width,
                    tile_path(level + 1, parent_index, parent_width),
                    tile_path(level, j, TILE_WIDTH),
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::encode;
    use crate::audit::verify::tests::{TestLog, leaves, record, signed};

    fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
        items.iter().map(Vec::as_slice).collect()
    }

    fn exported(log: &TestLog) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let latest = log.checkpoints.last().unwrap();
        export(dir.path(), &refs(&log.entries), latest).unwrap();
        dir
    }

    /// Rewrites one bundle of an export with `edit` applied to its entries.
    fn edit_bundle(dir: &Path, path: &str, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
        let file = join(dir, path);
        let mut entries = Vec::new();
        parse_bundle(&fs::read(&file).unwrap(), &mut entries).unwrap();
        edit(&mut entries);
        let mut bytes = Vec::new();
        for entry in &entries {
            bytes.extend_from_slice(&(entry.len() as u16).to_be_bytes());
            bytes.extend_from_slice(entry);
        }
        fs::write(file, bytes).unwrap();
    }

    fn failure_index(dir: &Path, log: &TestLog) -> Option<u64> {
        let failure = verify_export(dir, log.key(), None).unwrap_err();
        println!("{failure}");
        failure.index
    }

    #[test]
    fn tile_paths_follow_the_spec() {
        assert_eq!(tile_path(0, 1_234_067, 256), "tile/0/x001/x234/067");
        assert_eq!(tile_path(1, 0, 17), "tile/1/000.p/17");
        assert_eq!(tile_path(2, 1000, 256), "tile/2/x001/000");
        assert_eq!(tile_path(0, 999, 1), "tile/0/999.p/1");
        assert_eq!(bundle_path(1_234_067, 5), "tile/entries/x001/x234/067.p/5");
        assert_eq!(bundle_path(12, 256), "tile/entries/012");
        // The examples of the specification: 70,000 leaves make 273 full level-0 tiles and one
        // of width 112, one full level-1 tile and one of width 17, and a level-2 tile of width
        // 1; 256 leaves make a full level-0 tile and a level-1 tile of width 1.
        assert_eq!(level_lengths(70_000), vec![70_000, 273, 1]);
        assert_eq!(level_lengths(256), vec![256, 1]);
        assert_eq!(level_lengths(0), Vec::<u64>::new());
    }

    #[test]
    fn an_export_reads_back_and_verifies() {
        let log = TestLog::new(600, 50);
        let dir = tempfile::tempdir().unwrap();
        let summary = export(dir.path(), &refs(&log.entries), log.checkpoint(600)).unwrap();
        assert_eq!(summary.size, 600);
        assert_eq!(summary.entry_bundles, 3);
        // Level 0: two full tiles and one of 88; level 1: one of width 2.
        assert_eq!(summary.hash_tiles, 4);
        for path in [
            "checkpoint",
            "tile/0/000",
            "tile/0/001",
            "tile/0/002.p/88",
            "tile/1/000.p/2",
            "tile/entries/000",
            "tile/entries/002.p/88",
        ] {
            assert!(join(dir.path(), path).is_file(), "{path}");
        }
        let contents = read_export(dir.path(), log.key()).unwrap();
        assert_eq!(contents.entries, log.entries);
        assert_eq!(contents.leaf_hashes(), leaves(&log.entries).as_slice());
        assert_eq!(contents.checkpoint_note, log.checkpoint(600));
        let verified = verify_export(dir.path(), log.key(), None).unwrap();
        assert_eq!(verified.size, 600);
        assert_eq!(verified.root, contents.checkpoint.head.root);
        // An empty log exports as a lone checkpoint.
        let empty = tempfile::tempdir().unwrap();
        let note = signed(&log.signer, &[]);
        export(empty.path(), &[], &note).unwrap();
        assert_eq!(
            verify_export(empty.path(), log.key(), None).unwrap().size,
            0
        );
    }

    #[test]
    fn export_refuses_a_wrong_checkpoint_or_a_used_directory() {
        let log = TestLog::new(100, 50);
        let dir = tempfile::tempdir().unwrap();
        let entries = refs(&log.entries);
        assert!(matches!(
            export(dir.path(), &entries, log.checkpoint(50)),
            Err(TilesError::SizeMismatch { .. })
        ));
        let other = log.rewrite(100, 50, |_| ".other");
        assert!(matches!(
            export(dir.path(), &entries, other.checkpoint(100)),
            Err(TilesError::RootMismatch)
        ));
        export(dir.path(), &entries, log.checkpoint(100)).unwrap();
        assert!(matches!(
            export(dir.path(), &entries, log.checkpoint(100)),
            Err(TilesError::NotEmpty(_))
        ));
    }

    #[test]
    fn an_export_checkpoint_must_verify() {
        let log = TestLog::new(100, 50);
        let dir = exported(&log);
        let other = TestLog::new(1, 1);
        let failure = verify_export(dir.path(), other.key(), None).unwrap_err();
        assert_eq!(failure.index, None);
        assert!(
            failure
                .problem
                .starts_with("the export's checkpoint does not verify")
        );
        fs::remove_file(join(dir.path(), "checkpoint")).unwrap();
        assert!(verify_export(dir.path(), log.key(), None).is_err());
    }

    #[test]
    fn a_changed_byte_in_an_export_is_named() {
        let log = TestLog::new(600, 50);
        let dir = exported(&log);
        edit_bundle(dir.path(), "tile/entries/001", |entries| {
            let text = String::from_utf8(entries[300 - 256].clone()).unwrap();
            entries[300 - 256] = text.replace("red-barnet", "red-barneT").into_bytes();
        });
        assert_eq!(failure_index(dir.path(), &log), Some(300));
        // A changed leaf hash in a level-0 tile names its entry too.
        let dir = exported(&log);
        let tile = join(dir.path(), "tile/0/002.p/88");
        let mut bytes = fs::read(&tile).unwrap();
        bytes[(555 - 512) * 32 + 5] ^= 1;
        fs::write(&tile, bytes).unwrap();
        assert_eq!(failure_index(dir.path(), &log), Some(555));
    }

    #[test]
    fn a_deleted_inserted_or_swapped_entry_in_an_export_is_named() {
        let log = TestLog::new(600, 50);
        let dir = exported(&log);
        edit_bundle(dir.path(), "tile/entries/001", |entries| {
            entries.remove(300 - 256);
        });
        assert_eq!(failure_index(dir.path(), &log), Some(300));

        let dir = exported(&log);
        edit_bundle(dir.path(), "tile/entries/001", |entries| {
            entries.insert(300 - 256, encode(&record(300, ".forged"), 300, 1).unwrap());
        });
        assert_eq!(failure_index(dir.path(), &log), Some(300));

        let dir = exported(&log);
        edit_bundle(dir.path(), "tile/entries/000", |entries| {
            entries.swap(7, 8);
        });
        assert_eq!(failure_index(dir.path(), &log), Some(7));

        // An entry moved into the next bundle leaves the sequence intact, but not the export.
        let dir = exported(&log);
        let mut moved = None;
        edit_bundle(dir.path(), "tile/entries/000", |entries| {
            moved = entries.pop();
        });
        edit_bundle(dir.path(), "tile/entries/001", |entries| {
            entries.insert(0, moved.take().unwrap());
        });
        let failure = verify_export(dir.path(), log.key(), None).unwrap_err();
        assert_eq!(failure.index, Some(255));
        assert!(failure.problem.contains("tile/entries/000"), "{failure}");
        assert!(read_export(dir.path(), log.key()).is_err());
    }

    #[test]
    fn a_truncated_export_is_named() {
        let log = TestLog::new(600, 50);
        let dir = exported(&log);
        edit_bundle(dir.path(), "tile/entries/002.p/88", |entries| {
            entries.truncate(80);
        });
        let failure = verify_export(dir.path(), log.key(), None).unwrap_err();
        assert_eq!(failure.index, Some(592), "{failure}");
        assert!(failure.problem.contains("covers 600"), "{failure}");
        // A bundle cut inside an entry, and a missing bundle.
        let dir = exported(&log);
        let bundle = join(dir.path(), "tile/entries/002.p/88");
        let bytes = fs::read(&bundle).unwrap();
        fs::write(&bundle, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(failure_index(dir.path(), &log), Some(599));
        fs::remove_file(&bundle).unwrap();
        assert_eq!(failure_index(dir.path(), &log), Some(512));
    }

    #[test]
    fn an_altered_higher_tile_is_named_by_its_path() {
        let log = TestLog::new(600, 50);
        let dir = exported(&log);
        let tile = join(dir.path(), "tile/1/000.p/2");
        let mut bytes = fs::read(&tile).unwrap();
        bytes[40] ^= 1;
        fs::write(&tile, bytes).unwrap();
        let failure = verify_export(dir.path(), log.key(), None).unwrap_err();
        assert_eq!(failure.index, Some(256));
        assert_eq!(
            failure.problem,
            "hash 1 of `tile/1/000.p/2` is not the hash of `tile/0/001` below it: the tile was \
             altered"
        );
        // A tile of the wrong length is named too.
        fs::write(&tile, [0u8; 10]).unwrap();
        let failure = verify_export(dir.path(), log.key(), None).unwrap_err();
        assert!(failure.problem.contains("tile/1/000.p/2"), "{failure}");
    }

    #[test]
    fn against_an_earlier_checkpoint_an_export_extends_it_or_was_rewritten() {
        let log = TestLog::new(600, 50);
        let dir = exported(&log);
        for size in [50, 300, 600] {
            verify_export(dir.path(), log.key(), Some(log.checkpoint(size))).unwrap();
        }
        // The operator rewrites entries 300 onwards and re-signs with the node's own key: the
        // export verifies in itself, but not against a checkpoint that left the node before.
        let rewritten = log.rewrite(600, 50, |i| if i >= 300 { ".rewritten" } else { "" });
        let dir = exported(&rewritten);
        verify_export(dir.path(), log.key(), None).unwrap();
        verify_export(dir.path(), log.key(), Some(log.checkpoint(300))).unwrap();
        let failure = verify_export(dir.path(), log.key(), Some(log.checkpoint(350))).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "the current log does not extend the checkpoint seen earlier (size 350): it was \
             rewritten"
        );
        // Truncated and re-signed: shorter than what was seen.
        let shorter = log.rewrite(550, 50, |_| "");
        let dir = exported(&shorter);
        verify_export(dir.path(), log.key(), None).unwrap();
        let failure = verify_export(dir.path(), log.key(), Some(log.checkpoint(600))).unwrap_err();
        assert!(
            failure.problem.starts_with("the log is shorter"),
            "{failure}"
        );
    }
}
