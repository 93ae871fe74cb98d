//! Cross-checks our RFC 6962 Merkle tree and our C2SP checkpoints against independent
//! implementations, so that a bug we share between our prover and our verifier cannot hide:
//! roots, inclusion proofs and consistency proofs against the `tlog_tiles` crate (Cloudflare's
//! port of Go's sumdb/tlog, which works over stored hashes rather than recursing over the
//! leaves as we do), and signed checkpoints against the `signed_note` crate (the C2SP
//! signed-note implementation from the same family, on ed25519-dalek rather than ring). The tree
//! sizes are fixed edge cases plus pseudo-random sizes up to 100,000 from a fixed seed, so a
//! failure reproduces.

use brobygger::audit::checkpoint::{Checkpoint, TreeHead};
use brobygger::audit::merkle::{self, Frontier};
use brobygger::signed_note::{NoteSigner, VerifierKey, generate_ed25519_pkcs8};
use signed_note::{Note, Signer as _, Verifier as _};
use std::sync::OnceLock;
use tlog_tiles::HashReader;

/// The largest tree the random sizes are drawn from.
const MAX_SIZE: u64 = 100_000;

/// The log origin and key name of the checkpoints.
const ORIGIN: &str = "brobygger.test/herning-kommune/audit";

/// A xorshift64 generator: deterministic, so every run checks the same trees and indexes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The bytes of entry `i`: a short text followed by 0 to 120 pseudo-random bytes, so that the
/// entries differ in length as well as in content.
fn entry(i: u64) -> Vec<u8> {
    let mut rng = XorShift(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let extra = rng.next() % 121;
    let mut bytes = format!("entry {i}").into_bytes();
    bytes.extend((0..extra).map(|_| rng.next().to_le_bytes()[0]));
    bytes
}

/// An in-memory `tlog_tiles` hash store: the stored hashes of every record, in the order of
/// `tlog_tiles::stored_hash_index`.
struct HashStore(Vec<tlog_tiles::Hash>);

impl HashReader for HashStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.0.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// What every test shares: the sizes to check, our leaf hashes of the largest tree, and the
/// `tlog_tiles` store of the same entries. The store is append-only, so the trees of all smaller
/// sizes are prefixes of it and one store serves every size.
struct Fixture {
    sizes: Vec<u64>,
    leaves: Vec<merkle::Hash>,
    store: HashStore,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = XorShift(0x0062_726F_6279_6767);
        let mut sizes = vec![1, 2, 3, 255, 256, 257, 1000];
        sizes.extend((0..6).map(|_| rng.between(1, MAX_SIZE)));
        sizes.sort_unstable();
        let max = sizes.iter().copied().max().unwrap_or(1);

        let mut leaves = Vec::new();
        let mut store = HashStore(Vec::new());
        for i in 0..max {
            let data = entry(i);
            leaves.push(merkle::leaf_hash(&data));
            // `tlog_tiles` hashes the record itself, independently of our `leaf_hash`.
            let new = tlog_tiles::stored_hashes(i, &data, &store).unwrap();
            store.0.extend(new);
        }
        Fixture {
            sizes,
            leaves,
            store,
        }
    })
}

impl Fixture {
    /// The tree hash `tlog_tiles` computes for the first `n` entries.
    fn their_root(&self, n: u64) -> merkle::Hash {
        tlog_tiles::tree_hash(n, &self.store).unwrap().0
    }

    /// Our leaf hashes of the first `n` entries.
    fn leaves(&self, n: u64) -> &[merkle::Hash] {
        &self.leaves[..usize::try_from(n).unwrap()]
    }
}

fn to_tlog(proof: &[merkle::Hash]) -> Vec<tlog_tiles::Hash> {
    proof.iter().copied().map(tlog_tiles::Hash).collect()
}

fn from_tlog(proof: &[tlog_tiles::Hash]) -> Vec<merkle::Hash> {
    proof.iter().map(|h| h.0).collect()
}

/// The same proof with one bit flipped in one of its hashes, chosen by `rng`.
fn tampered(proof: &[merkle::Hash], rng: &mut XorShift) -> Vec<merkle::Hash> {
    let mut out = proof.to_vec();
    let at = usize::try_from(rng.next() % proof.len() as u64).unwrap();
    out[at][usize::try_from(rng.next() % 32).unwrap()] ^= 1;
    out
}

#[test]
fn roots_agree_with_tlog_tiles() {
    let f = fixture();
    assert_eq!(merkle::empty_root(), tlog_tiles::EMPTY_HASH.0);
    assert_eq!(f.their_root(0), merkle::empty_root());

    // Leaf hashes: `tlog_tiles` stores each record hash at level 0.
    for (i, leaf) in f.leaves.iter().enumerate() {
        let index = tlog_tiles::stored_hash_index(0, i as u64);
        let theirs = f.store.read_hashes(&[index]).unwrap();
        assert_eq!(theirs, [tlog_tiles::Hash(*leaf)], "leaf {i}");
    }

    // The recursive root and the frontier, at every size as the frontier grows past it.
    let mut frontier = Frontier::new();
    let mut pushed = 0;
    for &n in &f.sizes {
        let theirs = f.their_root(n);
        assert_eq!(merkle::root(f.leaves(n)), theirs, "root of size {n}");
        for leaf in &f.leaves(n)[pushed..] {
            frontier.push(*leaf);
        }
        pushed = f.leaves(n).len();
        assert_eq!(frontier.size(), n);
        assert_eq!(frontier.root(), theirs, "frontier root of size {n}");
    }
}

#[test]
fn inclusion_proofs_agree_with_tlog_tiles() {
    let f = fixture();
    let mut rng = XorShift(0x1d2c_3b4a_5968_7786);
    for &n in &f.sizes {
        let leaves = f.leaves(n);
        let root = f.their_root(n);
        let mut indexes = vec![0, n - 1];
        indexes.extend((0..18).map(|_| rng.between(0, n - 1)));
        for i in indexes {
            let leaf = leaves[usize::try_from(i).unwrap()];
            let ours = merkle::inclusion_proof(leaves, usize::try_from(i).unwrap()).unwrap();
            let theirs = from_tlog(&tlog_tiles::prove_record(n, i, &f.store).unwrap());
            // Both are RFC 6962 PATH(m, D[n]): the sibling next to the leaf first, the root's
            // other child last. So the proofs are not only both valid but the same list.
            assert_eq!(ours, theirs, "inclusion proof of {i} in {n}");
            tlog_tiles::check_record(
                &to_tlog(&ours),
                n,
                tlog_tiles::Hash(root),
                i,
                tlog_tiles::Hash(leaf),
            )
            .unwrap_or_else(|e| panic!("tlog_tiles refuses our proof of {i} in {n}: {e}"));
            assert!(
                merkle::verify_inclusion(i, n, &leaf, &theirs, &root),
                "we refuse the tlog_tiles proof of {i} in {n}"
            );

            // Both refuse the same altered proof.
            if !ours.is_empty() {
                let bad = tampered(&ours, &mut rng);
                let th = tlog_tiles::Hash(root);
                let lh = tlog_tiles::Hash(leaf);
                assert!(tlog_tiles::check_record(&to_tlog(&bad), n, th, i, lh).is_err());
                assert!(!merkle::verify_inclusion(i, n, &leaf, &bad, &root));
            }
        }
    }
}

#[test]
fn consistency_proofs_agree_with_tlog_tiles() {
    let f = fixture();
    let mut rng = XorShift(0x7f4a_7c15_9e37_79b9);
    for &n in &f.sizes {
        let leaves = f.leaves(n);
        let new_root = f.their_root(n);
        let mut old_sizes = vec![1, n];
        old_sizes.extend((0..8).map(|_| rng.between(1, n)));
        for m in old_sizes {
            let old_root = f.their_root(m);
            assert_eq!(merkle::root(f.leaves(m)), old_root, "root of size {m}");
            let ours = merkle::consistency_proof(leaves, usize::try_from(m).unwrap()).unwrap();
            let theirs = from_tlog(&tlog_tiles::prove_tree(n, m, &f.store).unwrap());
            // Both are RFC 6962 PROOF(m, D[n]), which leaves out the old root when the old tree
            // is a complete subtree: the same list again.
            assert_eq!(ours, theirs, "consistency proof of {m} -> {n}");
            tlog_tiles::check_tree(
                &to_tlog(&ours),
                n,
                tlog_tiles::Hash(new_root),
                m,
                tlog_tiles::Hash(old_root),
            )
            .unwrap_or_else(|e| panic!("tlog_tiles refuses our proof of {m} -> {n}: {e}"));
            assert!(
                merkle::verify_consistency(m, n, &old_root, &new_root, &theirs),
                "we refuse the tlog_tiles proof of {m} -> {n}"
            );

            // Both refuse the same altered proof.
            if !ours.is_empty() {
                let bad = tampered(&ours, &mut rng);
                let (nh, oh) = (tlog_tiles::Hash(new_root), tlog_tiles::Hash(old_root));
                assert!(tlog_tiles::check_tree(&to_tlog(&bad), n, nh, m, oh).is_err());
                assert!(!merkle::verify_consistency(
                    m, n, &old_root, &new_root, &bad
                ));
            }
        }
    }
}

/// An Ed25519 private key in the minimal PKCS#8 v1 form OpenSSL writes: a fixed header, then the
/// 32-byte seed (RFC 8410).
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(seed);
    der
}

/// The seed inside a PKCS#8 v2 document as ring writes it: the same header but for the length and
/// the version number, then the seed, then the public key.
fn seed_of_ring_pkcs8(der: &[u8]) -> [u8; 32] {
    assert_eq!(
        hex::encode(&der[..16]),
        "3051020101300506032b657004220420",
        "ring's PKCS#8 v2 layout changed"
    );
    der[16..48].try_into().unwrap()
}

/// The `signed_note` signer of a seed, from the Go `note` private key encoding
/// `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`. `signed_note` derives the public key
/// from the seed itself and refuses the key unless the ID matches it.
fn their_signer(name: &str, seed: &[u8; 32]) -> signed_note::StandardSigner {
    use base64::Engine as _;
    let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
    let mut encoded_public = vec![0x01];
    encoded_public.extend_from_slice(public.as_bytes());
    let mut encoded_private = vec![0x01];
    encoded_private.extend_from_slice(seed);
    signed_note::StandardSigner::new(&format!(
        "PRIVATE+KEY+{name}+{:08x}+{}",
        signed_note::key_id(name, &encoded_public),
        base64::engine::general_purpose::STANDARD.encode(encoded_private)
    ))
    .unwrap()
}

/// Checks one key: our signer loaded from `pkcs8`, theirs from the `seed` inside it.
fn check_checkpoints(seed: &[u8; 32], pkcs8: &[u8]) {
    let f = fixture();
    let ours = NoteSigner::from_pkcs8(ORIGIN, pkcs8).unwrap();
    let theirs = their_signer(ORIGIN, seed);

    // The verifier key string: `signed_note` writes the same one for the same public key, and
    // each side parses the other's.
    let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
    let their_vkey = signed_note::new_ed25519_verifier_key(ORIGIN, &public);
    assert_eq!(ours.verifier_key().to_string(), their_vkey);
    let our_key: VerifierKey = their_vkey.parse().unwrap();
    assert_eq!(&our_key, ours.verifier_key());
    let their_verifier = signed_note::StandardVerifier::new(&ours.verifier_key().to_string())
        .unwrap_or_else(|e| panic!("signed_note refuses our verifier key: {e}"));
    assert_eq!(their_verifier.name(), ORIGIN);
    assert_eq!(theirs.key_id(), their_verifier.key_id());
    let verifiers = signed_note::VerifierList::new(vec![Box::new(their_verifier)]);

    // A witness cosigning under another name: verifiers that do not know its key skip it.
    let witness = their_signer("witness.example/w1", &[7; 32]);

    for &n in &f.sizes {
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            head: TreeHead {
                size: n,
                root: f.their_root(n),
            },
        };
        let our_note = checkpoint.sign(&ours).unwrap();

        // `tlog_tiles` writes the same checkpoint body, `signed_note` signs it, and since Ed25519
        // signatures are deterministic (RFC 8032) the two notes are the same bytes.
        let root = tlog_tiles::Hash(checkpoint.head.root);
        let body = tlog_tiles::Checkpoint::new(ORIGIN, n, root, "")
            .unwrap()
            .to_bytes();
        assert_eq!(body, checkpoint.body().as_bytes());
        let mut their_note = Note::new(&body, &[]).unwrap();
        their_note.add_sigs(&[&theirs]).unwrap();
        assert_eq!(
            our_note.as_bytes(),
            their_note.to_bytes(),
            "note of size {n}"
        );

        // `signed_note` verifies our note with our verifier key, and `tlog_tiles` parses the
        // checkpoint in it.
        let parsed = Note::from_bytes(our_note.as_bytes()).unwrap();
        let (verified, unverified) = parsed
            .verify(&verifiers)
            .unwrap_or_else(|e| panic!("signed_note refuses our checkpoint of size {n}: {e}"));
        assert_eq!((verified.len(), unverified.len()), (1, 0));
        assert_eq!(verified[0].name(), ORIGIN);
        let their_checkpoint = tlog_tiles::Checkpoint::from_bytes(parsed.text()).unwrap();
        assert_eq!(their_checkpoint.origin(), ORIGIN);
        assert_eq!(their_checkpoint.size(), n);
        assert_eq!(their_checkpoint.hash().0, checkpoint.head.root);

        // We open their note, also when a witness has cosigned it and when it carries an
        // extension line, which the checkpoint format allows and we ignore.
        let signed = String::from_utf8(their_note.to_bytes()).unwrap();
        assert_eq!(Checkpoint::open(&signed, &our_key).unwrap(), checkpoint);
        their_note.add_sigs(&[&witness]).unwrap();
        let cosigned = String::from_utf8(their_note.to_bytes()).unwrap();
        assert_eq!(Checkpoint::open(&cosigned, &our_key).unwrap(), checkpoint);
        let (verified, unverified) = Note::from_bytes(cosigned.as_bytes())
            .unwrap()
            .verify(&verifiers)
            .unwrap();
        assert_eq!((verified.len(), unverified.len()), (1, 1));
        let extended = tlog_tiles::Checkpoint::new(ORIGIN, n, root, "brobygger.test extension\n")
            .unwrap()
            .to_bytes();
        let mut extended = Note::new(&extended, &[]).unwrap();
        extended.add_sigs(&[&theirs]).unwrap();
        let extended = String::from_utf8(extended.to_bytes()).unwrap();
        assert_eq!(Checkpoint::open(&extended, &our_key).unwrap(), checkpoint);

        // Both refuse our note with the size changed.
        let forged = our_note.replacen(&format!("\n{n}\n"), &format!("\n{}\n", n + 1), 1);
        assert!(Checkpoint::open(&forged, ours.verifier_key()).is_err());
        assert!(
            Note::from_bytes(forged.as_bytes())
                .unwrap()
                .verify(&verifiers)
                .is_err()
        );
    }
}

#[test]
fn checkpoints_agree_with_signed_note() {
    // A fixed seed in the PKCS#8 v1 form OpenSSL writes.
    let seed = [0x42; 32];
    check_checkpoints(&seed, &pkcs8_v1(&seed));
    // A fresh key as the node generates it (PKCS#8 v2 from ring).
    let der = generate_ed25519_pkcs8().unwrap();
    check_checkpoints(&seed_of_ring_pkcs8(&der), &der);
}
