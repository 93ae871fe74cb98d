//! Cross-checks our tlog-tiles export against the independent `tlog_tiles` crate (Cloudflare's
//! port of Go's sumdb/tlog): the set of hash tiles it says a tree needs must be the set we write,
//! and the tree hash and record proofs it computes from our tiles (authenticating every tile it
//! reads against the signed root) must agree with ours.

use brobygger::audit::checkpoint::{Checkpoint, TreeHead};
use brobygger::audit::entry::{AuditRecord, encode};
use brobygger::audit::merkle;
use brobygger::audit::tiles::{export, tile_path};
use brobygger::signed_note::{NoteSigner, generate_ed25519_pkcs8};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tlog_tiles::{Tile, TileHashReader, TileReader};

/// `tlog_tiles` 0.2.0 puts the tile height in its paths (`tile/8/0/x001/067`, as Go's sumdb
/// does); C2SP tlog-tiles fixes the height at 8 and leaves it out.
fn c2sp_path(tile: &Tile) -> String {
    tile.path().replacen("tile/8/", "tile/", 1)
}

/// Serves `tlog_tiles` the hash tiles of an export directory.
struct ExportTiles(PathBuf);

impl TileReader for ExportTiles {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                std::fs::read(self.0.join(c2sp_path(t))).map_err(|_| tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

/// The hash tiles an export holds, as paths relative to it.
fn hash_tiles_in(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, root, out)?;
            } else if let Some(relative) = path.strip_prefix(root).ok().and_then(Path::to_str)
                && !relative.starts_with("tile/entries/")
            {
                out.insert(relative.to_owned());
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(&dir.join("tile"), dir, &mut out)?;
    Ok(out)
}

#[test]
fn tlog_tiles_agrees_with_our_export() {
    let origin = "brobygger.test/herning-kommune/audit";
    let signer = NoteSigner::from_pkcs8(origin, &generate_ed25519_pkcs8().unwrap()).unwrap();
    for size in [1u64, 255, 256, 257, 511, 65_536, 70_000] {
        let entries: Vec<Vec<u8>> = (0..size)
            .map(|i| {
                let record = AuditRecord {
                    time: "2026-11-22T12:00:00.000Z".into(),
                    action: "federation.ping".into(),
                    ..AuditRecord::default()
                };
                encode(&record, i, 1).unwrap()
            })
            .collect();
        let leaves: Vec<merkle::Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
        let root = merkle::root(&leaves);
        let head = TreeHead { size, root };
        let note = Checkpoint {
            origin: origin.into(),
            head,
        }
        .sign(&signer)
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        export(dir.path(), &refs, &note).unwrap();

        // The same tiles, by the same names.
        let expected: BTreeSet<String> =
            Tile::new_tiles(8, 0, size).iter().map(c2sp_path).collect();
        assert_eq!(hash_tiles_in(dir.path()).unwrap(), expected, "size {size}");

        // tlog_tiles authenticates the tiles it reads against the signed root: the tree hash
        // fails unless our tiles are right.
        let reader = ExportTiles(dir.path().to_path_buf());
        let hashes = TileHashReader::new(size, tlog_tiles::Hash(root), &reader);
        assert_eq!(
            tlog_tiles::tree_hash(size, &hashes).unwrap(),
            tlog_tiles::Hash(root)
        );
        // Record proofs built from our tiles verify with our RFC 9162 verifier.
        for index in [0, size / 2, size - 1] {
            let proof = tlog_tiles::prove_record(size, index, &hashes).unwrap();
            let proof: Vec<merkle::Hash> = proof.iter().map(|h| h.0).collect();
            let leaf = &leaves[index as usize];
            assert!(
                merkle::verify_inclusion(index, size, leaf, &proof, &root),
                "size {size}, index {index}"
            );
        }
    }
    // Large indexes, full and partial.
    for (level, index, width) in [
        (0, 1_234_067, 256),
        (3, 1_234_067, 9),
        (1, 999, 1),
        (0, 1000, 256),
    ] {
        let tile = Tile::new(8, level, index, width, false);
        assert_eq!(c2sp_path(&tile), tile_path(level, index, width as usize));
    }
}
