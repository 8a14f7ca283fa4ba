"""Merkle tree hashing and proofs (RFC 9162 §2.1).

Vectors: the eight leaves of the RFC 6962 reference test data (certificate-transparency's
`merkle_tree_test`), whose roots, inclusion and consistency proofs are public. The small
trees are also written out by hand from the definitions (leaf = H(0x00||d),
node = H(0x01||l||r), split at the largest power of two below n), so a reader can check
the shape without trusting either implementation.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.transparency import merkle
from backupvault.transparency.errors import ConsistencyProofInvalid, InclusionProofInvalid

LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
ROOTS = {
    0: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_hashes_by_hand() -> None:
    assert merkle.leaf_hash(b"") == H(b"\x00")
    l0, l1, l2, l3, l4 = (H(b"\x00" + d) for d in LEAVES[:5])
    n01 = H(b"\x01" + l0 + l1)
    n23 = H(b"\x01" + l2 + l3)
    assert merkle.root(LEAVES[:1]) == l0
    assert merkle.root(LEAVES[:2]) == n01
    assert merkle.root(LEAVES[:3]) == H(b"\x01" + n01 + l2)  # split at 2: [0,1] [2]
    assert merkle.root(LEAVES[:4]) == H(b"\x01" + n01 + n23)
    n0123 = H(b"\x01" + n01 + n23)
    assert merkle.root(LEAVES[:5]) == H(b"\x01" + n0123 + l4)  # split at 4
    # inclusion of leaf 2 in the tree of 5: sibling l3, then n01, then l4
    assert merkle.inclusion_proof(HASHES[:5], 2) == [l3, n01, l4]
    # consistency 3 -> 4: l2 (the old tree's right part), l3, then n01
    assert merkle.consistency_proof(HASHES[:4], 3) == [l2, l3, n01]


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == ROOTS[size]


INCLUSION = [  # (index, size, proof) from the RFC 6962 reference test data
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion(index: int, size: int, proof: list[str]) -> None:
    got = merkle.inclusion_proof(HASHES[:size], index)
    assert [p.hex() for p in got] == proof
    merkle.verify_inclusion(HASHES[index], index, size, got, bytes.fromhex(ROOTS[size]))


CONSISTENCY = [  # (old, new, proof) from the RFC 6962 reference test data
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_reference_consistency(old: int, new: int, proof: list[str]) -> None:
    got = merkle.consistency_proof(HASHES[:new], old)
    assert [p.hex() for p in got] == proof
    merkle.verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), got)


def test_edge_cases_refused() -> None:
    root8 = bytes.fromhex(ROOTS[8])
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(HASHES[0], 8, 8, [], root8)  # index == size
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(HASHES[0], 0, 0, [], merkle.EMPTY_ROOT)  # empty tree
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(HASHES[0], 0, 8, [b"short"], root8)
    with pytest.raises(ConsistencyProofInvalid):
        merkle.verify_consistency(8, 7, root8, bytes.fromhex(ROOTS[7]), [])
    with pytest.raises(ConsistencyProofInvalid):  # same size, different roots: a fork
        merkle.verify_consistency(8, 8, root8, bytes.fromhex(ROOTS[7]), [])
    with pytest.raises(ConsistencyProofInvalid):  # a proof is needed when the tree grew
        merkle.verify_consistency(4, 8, bytes.fromhex(ROOTS[4]), root8, [])
    merkle.verify_consistency(0, 8, merkle.EMPTY_ROOT, root8, [])
    with pytest.raises(ValueError):
        merkle.inclusion_proof(HASHES, 8)
    with pytest.raises(ValueError):
        merkle.consistency_proof(HASHES, 9)


# --- properties ------------------------------------------------------------------------------


def _tree(n: int) -> list[bytes]:
    """n distinct leaves (distinct by construction, so no leaf can stand in for another)."""
    return [merkle.leaf_hash(b"leaf %d" % i) for i in range(n)]


def _flip(proof: list[bytes], which: int, bit: int) -> list[bytes]:
    out = list(proof)
    item = bytearray(out[which])
    item[bit // 8] ^= 1 << (bit % 8)
    out[which] = bytes(item)
    return out


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(n: int, data: st.DataObject) -> None:
    hashes = _tree(n)
    roots = [merkle.root_from_hashes(hashes[:k]) for k in range(n + 1)]
    root = roots[n]
    for index in range(n):
        merkle.verify_inclusion(
            hashes[index], index, n, merkle.inclusion_proof(hashes, index), root
        )
    index = data.draw(st.integers(0, n - 1))
    proof = merkle.inclusion_proof(hashes, index)
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(InclusionProofInvalid):
            merkle.verify_inclusion(hashes[index], index, n, _flip(proof, which, bit), root)
        with pytest.raises(InclusionProofInvalid):
            merkle.verify_inclusion(hashes[index], index, n, proof[:-1], root)
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(hashes[index], index, n, [*proof, root], root)
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(_flip([hashes[index]], 0, 0)[0], index, n, proof, root)
    # another index or size, checked against the root of that size (a verifier takes the
    # root from a checkpoint of the claimed size, so that is what an attacker must match)
    other_index = data.draw(st.integers(0, n + 2).filter(lambda i: i != index))
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(hashes[index], other_index, n, proof, root)
    other_size = data.draw(st.integers(0, n).filter(lambda s: s != n))
    with pytest.raises(InclusionProofInvalid):
        merkle.verify_inclusion(hashes[index], index, other_size, proof, roots[other_size])


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_every_consistency_proof_verifies_and_tampering_fails(n: int, data: st.DataObject) -> None:
    hashes = _tree(n)
    roots = [merkle.root_from_hashes(hashes[:k]) for k in range(n + 1)]
    for m in range(n + 1):
        merkle.verify_consistency(m, n, roots[m], roots[n], merkle.consistency_proof(hashes, m))
    m = data.draw(st.integers(1, n))
    proof = merkle.consistency_proof(hashes, m)
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        with pytest.raises(ConsistencyProofInvalid):
            merkle.verify_consistency(m, n, roots[m], roots[n], _flip(proof, which, bit))
        with pytest.raises(ConsistencyProofInvalid):
            merkle.verify_consistency(m, n, roots[m], roots[n], proof[:-1])
        with pytest.raises(ConsistencyProofInvalid):
            merkle.verify_consistency(m, n, roots[m], roots[n], [*proof, roots[n]])
    with pytest.raises(ConsistencyProofInvalid):
        merkle.verify_consistency(m, n, _flip([roots[m]], 0, 7)[0], roots[n], proof)
    with pytest.raises(ConsistencyProofInvalid):
        merkle.verify_consistency(m, n, roots[m], _flip([roots[n]], 0, 7)[0], proof)
    # other sizes, with the true roots of those sizes
    if n > 1:
        other_m = data.draw(st.integers(1, n).filter(lambda k: k != m))
        with pytest.raises(ConsistencyProofInvalid):
            merkle.verify_consistency(other_m, n, roots[other_m], roots[n], proof)
    other_n = data.draw(st.integers(m, n).filter(lambda k: k != n)) if m < n else None
    if other_n is not None:
        with pytest.raises(ConsistencyProofInvalid):
            merkle.verify_consistency(m, other_n, roots[m], roots[other_n], proof)


def test_tree_with_kept_subtrees_matches_the_definition() -> None:
    """merkle.Tree (the witness's cached tree) answers every prefix exactly as the
    RFC 9162 definitions over the plain leaf hashes do, while it grows."""
    hashes = [merkle.leaf_hash(b"%d" % i) for i in range(40)]
    tree = merkle.Tree()
    for n in range(1, len(hashes) + 1):
        tree.append(hashes[n - 1])
        assert len(tree) == n
        for size in range(n + 1):
            prefix = hashes[:size]
            assert tree.root(size) == merkle.root_from_hashes(prefix)
            for index in range(size):
                assert tree.inclusion_proof(index, size) == merkle.inclusion_proof(prefix, index)
            for old in range(size + 1):
                assert tree.consistency_proof(old, size) == merkle.consistency_proof(prefix, old)
    for bad in ((0, 41), (-1, 3), (3, 3)):
        with pytest.raises(ValueError):
            tree.inclusion_proof(*bad)
    for bad in ((0, 41), (4, 3), (-1, 3)):
        with pytest.raises(ValueError):
            tree.consistency_proof(*bad)
    with pytest.raises(ValueError):
        tree.append(b"short")
