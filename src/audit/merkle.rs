//! RFC 6962 Merkle tree hashing with SHA-256 (leaf prefix 0x00, node prefix 0x01): an
//! incremental frontier for appends, inclusion and consistency proofs, and their verification
//! as RFC 9162 §2.1.3.2 and §2.1.4.2 describe.
//!
//! Pure: no I/O, no storage. Proof generation takes the leaf hashes in memory; the verifiers
//! take only sizes, hashes and the proof.

use ring::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    finish(Context::new(&SHA256))
}

/// The leaf hash of an entry: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    finish(ctx)
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`).
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D[n]) of RFC 6962 §2.1, computed directly from the leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [single] => *single,
        _ => {
            let k = split_point(leaves.len());
            let (left, right) = leaves.split_at(k);
            node_hash(&root(left), &root(right))
        }
    }
}

/// The right edge of a tree: the roots of its perfect subtrees, largest first. Appending a leaf
/// and computing the root cost O(log n), which is what the writer needs per group commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the most significant bit down.
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree roots, largest first (what storage persists to resume appending).
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Rebuilds a frontier from persisted parts; `None` if the count does not match the size.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { size, nodes })
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a perfect subtree of the same height as the
        // one being carried: merge them, as binary addition carries.
        while size & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => hash = node_hash(&left, &hash),
                None => break,
            }
            size >>= 1;
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        match nodes.next() {
            None => empty_root(),
            Some(last) => nodes.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

/// PATH(m, D[n]) of RFC 6962 §2.1.1: the inclusion proof of leaf `index`. `None` if out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(leaves, index, &mut proof);
    Some(proof)
}

fn path(leaves: &[Hash], index: usize, proof: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split_point(leaves.len());
    let (left, right) = leaves.split_at(k);
    if index < k {
        path(left, index, proof);
        proof.push(root(right));
    } else {
        path(right, index - k, proof);
        proof.push(root(left));
    }
}

/// PROOF(m, D[n]) of RFC 6962 §2.1.2: proves the tree of the first `old_size` leaves is a prefix
/// of the tree of all `leaves`. `None` if `old_size` exceeds the tree.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    if old_size > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if old_size > 0 {
        subproof(leaves, old_size, true, &mut proof);
    }
    Some(proof)
}

fn subproof(leaves: &[Hash], m: usize, complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split_point(n);
    let (left, right) = leaves.split_at(k);
    if m <= k {
        subproof(left, m, complete, proof);
        proof.push(root(right));
    } else {
        subproof(right, m - k, false, proof);
        proof.push(root(left));
    }
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`), on tree sizes.
fn split_point_u64(n: u64) -> u64 {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The leaf ranges whose tree hashes (MTH of each range, in order) make up the inclusion proof
/// of leaf `index` in the tree of size `size`: the same proof as [`inclusion_proof`], planned
/// without the leaves, so a caller can hash each range while streaming its leaves in bounded
/// memory. `None` if `index >= size`.
pub fn inclusion_proof_ranges(size: u64, index: u64) -> Option<Vec<std::ops::Range<u64>>> {
    if index >= size {
        return None;
    }
    let mut steps = Vec::new();
    let (mut start, mut end) = (0u64, size);
    while end - start > 1 {
        let k = split_point_u64(end - start);
        if index < start + k {
            steps.push(start + k..end);
            end = start + k;
        } else {
            steps.push(start..start + k);
            start += k;
        }
    }
    // The proof runs from the leaf up: the deepest sibling comes first.
    steps.reverse();
    Some(steps)
}

/// The leaf ranges whose tree hashes (in order) make up the consistency proof from the tree of
/// size `old_size` to the tree of size `new_size`: the same proof as [`consistency_proof`],
/// planned without the leaves. `None` if `old_size > new_size`; empty when `old_size` is 0 or
/// equals `new_size`.
pub fn consistency_proof_ranges(old_size: u64, new_size: u64) -> Option<Vec<std::ops::Range<u64>>> {
    if old_size > new_size {
        return None;
    }
    let mut ranges = Vec::new();
    if old_size > 0 {
        subproof_ranges(0, new_size, old_size, true, &mut ranges);
    }
    Some(ranges)
}

/// SUBPROOF(m, D[start:end], complete) of RFC 6962 §2.1.2, as leaf ranges.
fn subproof_ranges(
    start: u64,
    end: u64,
    m: u64,
    complete: bool,
    ranges: &mut Vec<std::ops::Range<u64>>,
) {
    let n = end - start;
    if m == n {
        if !complete {
            ranges.push(start..end);
        }
        return;
    }
    let k = split_point_u64(n);
    if m <= k {
        subproof_ranges(start, start + k, m, complete, ranges);
        ranges.push(start + k..end);
    } else {
        subproof_ranges(start + k, end, m - k, false, ranges);
        ranges.push(start..start + k);
    }
}

/// Verifies an inclusion proof as RFC 9162 §2.1.3.2 describes.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && &r == root
}

/// Verifies a consistency proof as RFC 9162 §2.1.4.2 describes, with the trivial cases made
/// explicit: every tree extends the empty tree, and a tree extends itself with an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == 0 {
        return proof.is_empty() && old_root == &empty_root();
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    &fr == old_root && &sr == new_root && sn == 0
}

/// What one group commit knows of the tree: the frontier before it (size `first`) and the
/// batch's own leaf hashes. That is enough to prove the inclusion of any leaf of the batch in the
/// tree of size `first + leaves.len()` without reading older leaves: every sibling on such a
/// proof path is either a node of the old frontier or lies inside the batch. (A left sibling
/// strictly inside a frontier node would make the leaf itself fall inside that node.)
#[derive(Debug)]
pub struct BatchTree {
    before: Frontier,
    leaves: Vec<Hash>,
    /// `levels[k]` holds the roots of the perfect subtrees of height `k` whose range lies inside
    /// the batch and starts at a multiple of 2^k, built once on first use.
    levels: std::sync::OnceLock<Vec<Vec<Hash>>>,
}

impl BatchTree {
    pub fn new(before: Frontier, leaves: Vec<Hash>) -> Self {
        Self {
            before,
            leaves,
            levels: std::sync::OnceLock::new(),
        }
    }

    /// The first index of the batch.
    pub fn first(&self) -> u64 {
        self.before.size()
    }

    /// The size of the tree after the batch.
    pub fn size(&self) -> u64 {
        self.first() + self.leaves.len() as u64
    }

    fn first_aligned(&self, height: u32) -> u64 {
        self.first().div_ceil(1 << height) << height
    }

    fn levels(&self) -> &[Vec<Hash>] {
        self.levels.get_or_init(|| {
            let mut levels = vec![self.leaves.clone()];
            let mut height = 1;
            loop {
                let width = 1u64 << height;
                let start = self.first_aligned(height);
                let below = self.first_aligned(height - 1);
                let Some(previous) = levels.last() else { break };
                let mut level = Vec::new();
                let mut node = start;
                while node + width <= self.size() {
                    let left = ((node - below) >> (height - 1)) as usize;
                    match (previous.get(left), previous.get(left + 1)) {
                        (Some(l), Some(r)) => level.push(node_hash(l, r)),
                        _ => break,
                    }
                    node += width;
                }
                if level.is_empty() {
                    break;
                }
                levels.push(level);
                height += 1;
            }
            levels
        })
    }

    /// The frontier node covering exactly `[start, end)`, if there is one.
    fn frontier_node(&self, start: u64, end: u64) -> Option<Hash> {
        let size = self.first();
        let mut from = 0u64;
        let mut nodes = self.before.nodes().iter();
        for bit in (0..64).rev() {
            let width = 1u64 << bit;
            if size & width == 0 {
                continue;
            }
            let node = nodes.next()?;
            if from == start && from + width == end {
                return Some(*node);
            }
            from += width;
        }
        None
    }

    /// MTH of the leaves `[start, end)` of the tree after the batch.
    fn range_hash(&self, start: u64, end: u64) -> Option<Hash> {
        let width = end.checked_sub(start)?;
        if width == 0 {
            return None;
        }
        if width.is_power_of_two() && start.is_multiple_of(width) {
            if start >= self.first() {
                let height = width.trailing_zeros();
                let offset = (start - self.first_aligned(height)) >> height;
                if let Some(hash) = self
                    .levels()
                    .get(height as usize)
                    .and_then(|level| level.get(offset as usize))
                {
                    return Some(*hash);
                }
            } else if end <= self.first() {
                return self.frontier_node(start, end);
            }
        }
        if width == 1 {
            return None;
        }
        let k = split_point(usize::try_from(width).ok()?) as u64;
        Some(node_hash(
            &self.range_hash(start, start + k)?,
            &self.range_hash(start + k, end)?,
        ))
    }

    /// The inclusion proof of leaf `index` (inside the batch) in the tree after the batch, as
    /// [`inclusion_proof`] over all leaves would give it. `None` outside the batch.
    pub fn inclusion_proof(&self, index: u64) -> Option<Vec<Hash>> {
        if index < self.first() || index >= self.size() {
            return None;
        }
        let mut proof = Vec::new();
        let (mut start, mut end) = (0u64, self.size());
        let mut steps = Vec::new();
        while end - start > 1 {
            let k = split_point(usize::try_from(end - start).ok()?) as u64;
            if index < start + k {
                steps.push((start + k, end));
                end = start + k;
            } else {
                steps.push((start, start + k));
                start += k;
            }
        }
        // The path is built from the leaf up: the deepest sibling comes first.
        for (from, to) in steps.into_iter().rev() {
            proof.push(self.range_hash(from, to)?);
        }
        Some(proof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    /// The planned ranges give exactly the proofs computed from the leaves.
    #[test]
    fn proof_ranges_give_the_same_proofs_as_the_leaves() {
        let all = leaves(70);
        let hash_of = |ranges: Vec<std::ops::Range<u64>>| -> Vec<Hash> {
            ranges
                .into_iter()
                .map(|r| root(&all[r.start as usize..r.end as usize]))
                .collect()
        };
        for size in 0..=all.len() {
            let tree = &all[..size];
            for index in 0..=size {
                assert_eq!(
                    inclusion_proof_ranges(size as u64, index as u64).map(hash_of),
                    inclusion_proof(tree, index),
                    "inclusion of {index} in {size}"
                );
                assert_eq!(
                    consistency_proof_ranges(index as u64, size as u64).map(hash_of),
                    consistency_proof(tree, index),
                    "consistency from {index} to {size}"
                );
            }
            assert_eq!(consistency_proof_ranges(size as u64 + 1, size as u64), None);
        }
    }

    /// The test vectors used by Certificate Transparency implementations (RFC 6962 trees of the
    /// eight inputs below).
    #[test]
    fn matches_the_certificate_transparency_test_vectors() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let hashes: Vec<Hash> = inputs.iter().map(|i| leaf_hash(i)).collect();
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(root(&hashes[..1])),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(
            hex::encode(root(&hashes)),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }

    #[test]
    fn the_frontier_agrees_with_the_recursive_definition() {
        let all = leaves(600);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.size(), i as u64 + 1);
            assert_eq!(frontier.root(), root(&all[..=i]), "size {}", i + 1);
            let resumed = Frontier::from_parts(frontier.size(), frontier.nodes().to_vec()).unwrap();
            assert_eq!(resumed, frontier);
        }
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_altered_one_does() {
        for n in 1..=40usize {
            let all = leaves(n);
            let tree_root = root(&all);
            for i in 0..n {
                let proof = inclusion_proof(&all, i).unwrap();
                assert!(verify_inclusion(
                    i as u64, n as u64, &all[i], &proof, &tree_root
                ));
                // Wrong leaf, wrong index, altered or truncated proof: refused. (The size is
                // bound to the root by the signed checkpoint, not by the proof's shape: a proof
                // can verify for two sizes whose trees hash the path alike.)
                let other = leaf_hash(b"not in the log");
                assert!(!verify_inclusion(
                    i as u64, n as u64, &other, &proof, &tree_root
                ));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(!verify_inclusion(
                        j as u64, n as u64, &all[i], &proof, &tree_root
                    ));
                    let mut altered = proof.clone();
                    altered[0][0] ^= 1;
                    assert!(!verify_inclusion(
                        i as u64, n as u64, &all[i], &altered, &tree_root
                    ));
                    assert!(!verify_inclusion(
                        i as u64,
                        n as u64,
                        &all[i],
                        &proof[..proof.len() - 1],
                        &tree_root
                    ));
                }
            }
            assert!(inclusion_proof(&all, n).is_none());
            assert!(!verify_inclusion(
                n as u64,
                n as u64,
                &all[0],
                &[],
                &tree_root
            ));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_no_altered_one_does() {
        for n in 1..=40usize {
            let all = leaves(n);
            let new_root = root(&all);
            for m in 0..=n {
                let old_root = root(&all[..m]);
                let proof = consistency_proof(&all, m).unwrap();
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof),
                    "{m} -> {n}"
                );
                if m > 0 && m < n {
                    let mut altered = proof.clone();
                    altered[0][31] ^= 1;
                    assert!(!verify_consistency(
                        m as u64, n as u64, &old_root, &new_root, &altered
                    ));
                    let forked_old = leaf_hash(b"forked history");
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &forked_old,
                        &new_root,
                        &proof
                    ));
                }
            }
            assert!(consistency_proof(&all, n + 1).is_none());
            // Only the empty tree is the empty prefix.
            assert!(!verify_consistency(0, n as u64, &all[0], &new_root, &[]));
            assert!(!verify_consistency(
                n as u64 + 1,
                n as u64,
                &new_root,
                &new_root,
                &[]
            ));
        }
    }

    #[test]
    fn batch_proofs_equal_proofs_over_all_leaves() {
        let all: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for first in [0usize, 1, 2, 3, 5, 8, 13, 64, 100, 127, 128, 129, 200] {
            for batch in [1usize, 2, 3, 7, 16, 31, 64, 99] {
                let end = first + batch;
                if end > all.len() {
                    continue;
                }
                let mut before = Frontier::new();
                for leaf in &all[..first] {
                    before.push(*leaf);
                }
                let tree = BatchTree::new(before, all[first..end].to_vec());
                assert_eq!(tree.inclusion_proof(first as u64 + batch as u64), None);
                if first > 0 {
                    assert_eq!(tree.inclusion_proof(first as u64 - 1), None);
                }
                for index in first..end {
                    assert_eq!(
                        tree.inclusion_proof(index as u64),
                        inclusion_proof(&all[..end], index),
                        "first {first}, batch {batch}, index {index}"
                    );
                }
            }
        }
    }
}
