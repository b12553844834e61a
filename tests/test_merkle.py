"""The SHA-256 Merkle tree and its multiproofs (secagg.protocol.merkle), checked against the spec text.

The expected roots and proofs here are recomputed with hashlib straight from the construction in the
module docstring (a naive full-tree reference below), never through the module's own helpers.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from secagg.errors import ConfigError
from secagg.protocol.merkle import HASH_BYTES, MerkleTree, leaf_hash, verify_multiproof

ZERO = bytes(32)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def data_of(n: int) -> list[bytes]:
    """``n`` distinct leaves of varying length."""
    return [b"client-%d:" % i + bytes(i % 7) for i in range(n)]


def ref_levels(data: list[bytes]) -> list[list[bytes]]:
    """All levels, bottom-up, exactly as the spec words them."""
    width = 1
    while width < len(data):
        width *= 2
    levels = [[sha(b"\x00" + x) for x in data] + [ZERO] * (width - len(data))]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([sha(b"\x01" + below[2 * i] + below[2 * i + 1]) for i in range(len(below) // 2)])
    return levels


def ref_proof(levels: list[list[bytes]], indices: set[int]) -> bytes:
    known, out = set(indices), b""
    for level in levels[:-1]:
        for s in sorted({i ^ 1 for i in known} - known):
            out += level[s]
        known = {i >> 1 for i in known}
    return out


def ref_proof_hashes(n: int, indices: set[int]) -> int:
    """How many hashes the canonical walk appends (the width only depends on ``n``)."""
    depth = (n - 1).bit_length()
    known, count = set(indices), 0
    for _ in range(depth):
        count += len({i ^ 1 for i in known} - known)
        known = {i >> 1 for i in known}
    return count


@st.composite
def tree_and_subset(draw: st.DrawFn, max_n: int = 300) -> tuple[int, set[int]]:
    n = draw(st.integers(1, max_n))
    indices = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=min(n, 80)))
    return n, indices


# --- hand-computed roots ------------------------------------------------------------------------


def test_root_of_one_leaf_is_its_leaf_hash() -> None:
    tree = MerkleTree([b"alpha"])
    assert tree.root == sha(b"\x00alpha")
    assert (tree.size, tree.depth) == (1, 0)
    assert tree.multiproof([0]) == b""
    assert verify_multiproof(tree.root, 1, {0: sha(b"\x00alpha")}, b"")


def test_root_of_two_leaves() -> None:
    a, b = sha(b"\x00alpha"), sha(b"\x00beta")
    tree = MerkleTree([b"alpha", b"beta"])
    assert tree.root == sha(b"\x01" + a + b)
    assert (tree.size, tree.depth) == (2, 1)
    assert tree.multiproof([0]) == b
    assert tree.multiproof([1]) == a
    assert tree.multiproof([1, 0]) == b""


def test_root_of_three_leaves_pads_with_zero_bytes() -> None:
    a, b, c = sha(b"\x00alpha"), sha(b"\x00beta"), sha(b"\x00gamma")
    ab = sha(b"\x01" + a + b)
    c_pad = sha(b"\x01" + c + bytes(32))
    tree = MerkleTree([b"alpha", b"beta", b"gamma"])
    assert tree.root == sha(b"\x01" + ab + c_pad)
    assert (tree.size, tree.depth) == (3, 2)
    # The padding sibling goes into the proof as it is: 32 zero bytes, then the left subtree.
    assert tree.multiproof([2]) == bytes(32) + ab
    assert tree.multiproof([0, 1, 2]) == bytes(32)
    # Level 0 siblings in order of sibling index (1, then 3), then nothing at level 1.
    assert tree.multiproof([2, 0]) == b + bytes(32)


def test_root_of_five_leaves_hashes_nodes_above_padding_only() -> None:
    h = [sha(b"\x00" + bytes([i])) for i in range(5)]
    pad2 = sha(b"\x01" + bytes(64))
    left = sha(b"\x01" + sha(b"\x01" + h[0] + h[1]) + sha(b"\x01" + h[2] + h[3]))
    right = sha(b"\x01" + sha(b"\x01" + h[4] + bytes(32)) + pad2)
    tree = MerkleTree([bytes([i]) for i in range(5)])
    assert tree.root == sha(b"\x01" + left + right)
    assert tree.depth == 3
    assert tree.multiproof([4]) == bytes(32) + pad2 + left


def test_leaf_and_from_hashes_agree_with_raw_build() -> None:
    data = data_of(11)
    tree = MerkleTree(data)
    hashed = MerkleTree.from_hashes([leaf_hash(x) for x in data])
    assert hashed.root == tree.root
    assert all(tree.leaf(i) == sha(b"\x00" + x) == hashed.leaf(i) for i, x in enumerate(data))
    assert leaf_hash(b"") == sha(b"\x00")
    assert HASH_BYTES == 32


# --- proofs verify and have the canonical shape ------------------------------------------------


@given(tree_and_subset())
def test_multiproof_matches_the_reference_and_verifies(case: tuple[int, set[int]]) -> None:
    n, indices = case
    data = data_of(n)
    tree, levels = MerkleTree(data), ref_levels(data)
    assert tree.root == levels[-1][0]
    assert tree.depth == len(levels) - 1
    proof = tree.multiproof(sorted(indices, reverse=True))
    assert proof == ref_proof(levels, indices)
    assert len(proof) == HASH_BYTES * ref_proof_hashes(n, indices)
    assert verify_multiproof(tree.root, n, {i: tree.leaf(i) for i in indices}, proof)


@given(st.integers(0, 9))
def test_full_set_of_a_power_of_two_has_an_empty_proof(log_n: int) -> None:
    n = 1 << log_n
    tree = MerkleTree(data_of(n))
    assert tree.multiproof(range(n)) == b""
    assert verify_multiproof(tree.root, n, {i: tree.leaf(i) for i in range(n)}, b"")


@given(st.integers(3, 300).filter(lambda n: n & (n - 1)))
def test_full_set_of_other_sizes_proves_the_padding(n: int) -> None:
    tree = MerkleTree(data_of(n))
    proof = tree.multiproof(range(n))
    assert proof and len(proof) == HASH_BYTES * ref_proof_hashes(n, set(range(n)))
    assert verify_multiproof(tree.root, n, {i: tree.leaf(i) for i in range(n)}, proof)


@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_single_index_proof_has_depth_hashes(case: tuple[int, int]) -> None:
    n, index = case
    tree = MerkleTree(data_of(n))
    proof = tree.multiproof([index])
    assert len(proof) == HASH_BYTES * tree.depth == HASH_BYTES * (n - 1).bit_length()
    assert verify_multiproof(tree.root, n, {index: tree.leaf(index)}, proof)


def test_verification_does_no_work_in_the_list_size() -> None:
    # A 2^40-leaf list cannot be built; fold one path by hand and check it verifies at once.
    depth = 40
    siblings = [sha(bytes([j])) for j in range(depth)]
    index, node = 5, sha(b"\x00leaf")
    for j, s in enumerate(siblings):
        bit = (index >> j) & 1
        node = sha(b"\x01" + (s + node if bit else node + s))
    assert verify_multiproof(node, 1 << depth, {index: sha(b"\x00leaf")}, b"".join(siblings))
    assert not verify_multiproof(node, 1 << depth, {index + 1: sha(b"\x00leaf")}, b"".join(siblings))


# --- tampering ---------------------------------------------------------------------------------


def _case(n: int, indices: set[int]) -> tuple[MerkleTree, dict[int, bytes], bytes]:
    tree = MerkleTree(data_of(n))
    return tree, {i: tree.leaf(i) for i in indices}, tree.multiproof(indices)


@given(tree_and_subset(), st.data())
def test_a_changed_leaf_hash_fails(case: tuple[int, set[int]], data: st.DataObject) -> None:
    tree, leaves, proof = _case(*case)
    index = data.draw(st.sampled_from(sorted(leaves)))
    other = data.draw(st.binary(min_size=32, max_size=32))
    assume(other != leaves[index])
    assert not verify_multiproof(tree.root, tree.size, {**leaves, index: other}, proof)


@given(tree_and_subset(), st.data())
def test_a_flipped_proof_bit_fails(case: tuple[int, set[int]], data: st.DataObject) -> None:
    tree, leaves, proof = _case(*case)
    assume(proof)
    bit = data.draw(st.integers(0, 8 * len(proof) - 1))
    bad = bytearray(proof)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert not verify_multiproof(tree.root, tree.size, leaves, bytes(bad))


@given(tree_and_subset(), st.binary(min_size=32, max_size=32), st.booleans())
def test_an_extra_or_missing_hash_fails(case: tuple[int, set[int]], extra: bytes, front: bool) -> None:
    tree, leaves, proof = _case(*case)
    assert not verify_multiproof(tree.root, tree.size, leaves, extra + proof if front else proof + extra)
    if proof:
        shorter = proof[32:] if front else proof[:-32]
        assert not verify_multiproof(tree.root, tree.size, leaves, shorter)
    for cut in (1, 31, 33):
        assert not verify_multiproof(tree.root, tree.size, leaves, proof + bytes(cut))
        if len(proof) >= cut:
            assert not verify_multiproof(tree.root, tree.size, leaves, proof[:-cut])


@given(tree_and_subset(), st.binary(min_size=32, max_size=32))
def test_another_root_fails(case: tuple[int, set[int]], root: bytes) -> None:
    tree, leaves, proof = _case(*case)
    assume(root != tree.root)
    assert not verify_multiproof(root, tree.size, leaves, proof)


@given(tree_and_subset(), st.integers(1, 1200))
def test_another_size_fails_when_width_or_range_changes(case: tuple[int, set[int]], size: int) -> None:
    tree, leaves, proof = _case(*case)
    ok = verify_multiproof(tree.root, size, leaves, proof)
    same_width = (size - 1).bit_length() == tree.depth
    # The size enters only through the width and the index range (documented in the module).
    assert ok == (same_width and max(leaves) < size)


@given(tree_and_subset(), st.data())
def test_a_moved_index_fails(case: tuple[int, set[int]], data: st.DataObject) -> None:
    n, indices = case
    assume(len(indices) < n)
    tree, leaves, proof = _case(n, indices)
    src = data.draw(st.sampled_from(sorted(indices)))
    dst = data.draw(st.sampled_from(sorted(set(range(n)) - indices)))
    moved = {i: h for i, h in leaves.items() if i != src} | {dst: leaves[src]}
    assert not verify_multiproof(tree.root, n, moved, proof)
    assert not verify_multiproof(tree.root, n, moved, tree.multiproof(moved))


@given(tree_and_subset().filter(lambda c: len(c[1]) >= 2), st.data())
def test_swapped_leaf_hashes_fail(case: tuple[int, set[int]], data: st.DataObject) -> None:
    tree, leaves, proof = _case(*case)
    a, b = data.draw(st.lists(st.sampled_from(sorted(leaves)), min_size=2, max_size=2, unique=True))
    assert not verify_multiproof(tree.root, tree.size, {**leaves, a: leaves[b], b: leaves[a]}, proof)


def test_padding_cannot_be_claimed_as_a_leaf() -> None:
    tree = MerkleTree(data_of(3))
    proof = tree.multiproof([2])
    assert verify_multiproof(tree.root, 3, {2: tree.leaf(2)}, proof)
    # Slot 3 is padding: it is outside [0, size) even with the right value and a fitting proof.
    assert not verify_multiproof(tree.root, 3, {2: tree.leaf(2), 3: ZERO}, proof[32:])
    assert not verify_multiproof(tree.root, 3, {3: ZERO}, tree.leaf(2) + proof[32:])


# --- malformed verifier input: False, never an exception ----------------------------------------


def test_malformed_verifier_input_is_rejected_without_raising() -> None:
    tree = MerkleTree(data_of(5))
    leaves = {1: tree.leaf(1)}
    proof = tree.multiproof([1])
    assert verify_multiproof(tree.root, 5, leaves, proof)
    bad_calls = [
        (tree.root[:31], 5, leaves, proof),
        (tree.root + b"\x00", 5, leaves, proof),
        ("root", 5, leaves, proof),
        (tree.root, 0, leaves, proof),
        (tree.root, -5, leaves, proof),
        (tree.root, "5", leaves, proof),
        (tree.root, 5.0, leaves, proof),
        (tree.root, True, leaves, proof),
        (tree.root, 5, {}, proof),
        (tree.root, 5, {5: tree.leaf(1)}, proof),
        (tree.root, 5, {-1: tree.leaf(1)}, proof),
        (tree.root, 5, {"1": tree.leaf(1)}, proof),
        (tree.root, 5, {1.0: tree.leaf(1)}, proof),
        (tree.root, 5, {True: tree.leaf(1)}, proof),
        (tree.root, 5, {1: tree.leaf(1)[:31]}, proof),
        (tree.root, 5, {1: "hash"}, proof),
        (tree.root, 5, {1: None}, proof),
        (tree.root, 5, None, proof),
        (tree.root, 5, [tree.leaf(1)], proof),
        (tree.root, 5, leaves, None),
        (tree.root, 5, leaves, "proof"),
        (tree.root, 5, leaves, proof[:-1]),
        (tree.root, 5, leaves, b""),
    ]
    for args in bad_calls:
        assert verify_multiproof(*args) is False, args


# --- misuse when building -----------------------------------------------------------------------


def test_building_misuse_raises_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"leaves: must hold at least 1"):
        MerkleTree([])
    with pytest.raises(ConfigError, match=r"hashes: must hold at least 1"):
        MerkleTree.from_hashes([])
    with pytest.raises(ConfigError, match=r"hashes\[1\]: must be 32 bytes, got 31"):
        MerkleTree.from_hashes([ZERO, bytes(31)])
    with pytest.raises(ConfigError, match=r"hashes\[0\]: must be 32 bytes, got 33"):
        MerkleTree.from_hashes([bytes(33)])
    with pytest.raises(ConfigError, match=r"hashes\[0\]: must be bytes"):
        MerkleTree.from_hashes(["0" * 32])
    with pytest.raises(ConfigError, match=r"leaves\[2\]: must be bytes"):
        MerkleTree([b"a", b"b", "c"])
    tree = MerkleTree(data_of(5))
    with pytest.raises(ConfigError, match=r"indices: must be in \[0, 4\], got 5"):
        tree.multiproof([0, 5])
    with pytest.raises(ConfigError, match=r"indices: must be in \[0, 4\], got -1"):
        tree.multiproof([-1])
    with pytest.raises(ConfigError, match=r"indices: must hold at least 1"):
        tree.multiproof([])
    with pytest.raises(ConfigError, match=r"indices: must be an integer"):
        tree.multiproof([1.0])
    with pytest.raises(ConfigError, match=r"index: must be in \[0, 4\], got 5"):
        tree.leaf(5)
