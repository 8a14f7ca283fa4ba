"""Merkle tree hashing, inclusion and consistency proofs (RFC 9162 §2.1, = RFC 6962 §2.1).

    leaf hash  = SHA-256(0x00 || leaf data)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()                   (the empty tree)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))  with k the largest power of 2 below n

Functions working on a tree take the list of leaf *hashes*; proofs are lists of 32-byte
hashes. The verifiers follow the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 step by
step and raise `InclusionProofInvalid` / `ConsistencyProofInvalid`; they never trust a
size or index they did not check. Everything here is pure.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from backupvault.transparency.errors import ConsistencyProofInvalid, InclusionProofInvalid

HASH_LEN = 32
#: A proof is at most 2 * 64 hashes long for any tree of up to 2^64 leaves.
MAX_PROOF_HASHES = 128


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


#: MTH(D[lo:hi]) of some tree: by recomputing from the leaf hashes, or from a `Tree`.
_Subtree = Callable[[int, int], bytes]


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return node_hash(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def _over(hashes: Sequence[bytes]) -> _Subtree:
    return lambda lo, hi: _mth(hashes, lo, hi)


def root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree whose leaf hashes are `hashes`."""
    return EMPTY_ROOT if not hashes else _mth(hashes, 0, len(hashes))


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the tree whose leaves (data, not hashes) are `leaves`."""
    return root_from_hashes([leaf_hash(leaf) for leaf in leaves])


# --- inclusion ------------------------------------------------------------------------------


def _path(m: int, mth: _Subtree, lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, mth, lo, lo + k), mth(lo + k, hi)]
    return [*_path(m - k, mth, lo + k, hi), mth(lo, lo + k)]


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) (RFC 9162 §2.1.3.1) for the tree with leaf hashes `hashes`."""
    if not 0 <= index < len(hashes):
        raise ValueError(f"leaf index {index} outside a tree of {len(hashes)} leaves")
    return _path(index, _over(hashes), 0, len(hashes))


def _check_hashes(proof: Sequence[bytes], error: type[Exception]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise error("the proof has too many hashes")
    for item in proof:
        if not isinstance(item, bytes) or len(item) != HASH_LEN:
            raise error("a proof hash is not 32 bytes")


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that leaf hash `leaf` is leaf `index` of the tree of `tree_size` with
    `root_hash` (RFC 9162 §2.1.3.2). Raises `InclusionProofInvalid` otherwise."""
    _check_hashes(proof, InclusionProofInvalid)
    if len(leaf) != HASH_LEN or len(root_hash) != HASH_LEN:
        raise InclusionProofInvalid("leaf and root hashes are 32 bytes")
    if not 0 <= index < tree_size:
        raise InclusionProofInvalid(f"leaf index {index} is outside a tree of {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            raise InclusionProofInvalid("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionProofInvalid("the inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, root_hash):
        raise InclusionProofInvalid("the inclusion proof does not lead to the root hash")


# --- consistency ----------------------------------------------------------------------------


def _subproof(m: int, mth: _Subtree, lo: int, hi: int, whole: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [mth(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, mth, lo, lo + k, whole), mth(lo + k, hi)]
    return [*_subproof(m - k, mth, lo + k, hi, False), mth(lo, lo + k)]


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) (RFC 9162 §2.1.4.1); empty when old_size is 0 or n."""
    n = len(hashes)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} outside 0..{n}")
    if old_size in (0, n):
        return []
    return _subproof(old_size, _over(hashes), 0, n, True)


class Tree:
    """Leaf hashes that only grow, with the hash of every complete subtree kept (level k
    holds MTH(D[i·2^k : (i+1)·2^k]) for each i; about one more hash per leaf).

    Every subtree RFC 9162 splits a prefix into is either such a complete, aligned one
    or the right edge, so the root, PATH and PROOF of any prefix cost O(log² n) hashes
    instead of rebuilding the tree (O(n)) for each request anyone may make. Not
    thread-safe: the witness store guards it."""

    def __init__(self, hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for item in hashes:
            self.append(item)

    def __len__(self) -> int:
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def append(self, leaf: bytes) -> None:
        if len(leaf) != HASH_LEN:
            raise ValueError("a leaf hash is 32 bytes")
        self._levels[0].append(leaf)
        level = 0
        while len(self._levels[level]) % 2 == 0:  # a subtree of 2^(level+1) just completed
            pair = self._levels[level][-2:]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(pair[0], pair[1]))
            level += 1

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            return self._levels[n.bit_length() - 1][lo // n]
        k = _split(n)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def _check(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise ValueError(f"no tree of {size} leaves in a log of {len(self)}")

    def root(self, size: int) -> bytes:
        """MTH of the first `size` leaves."""
        self._check(size)
        return EMPTY_ROOT if size == 0 else self._mth(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size])."""
        self._check(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} outside a tree of {size} leaves")
        return _path(index, self._mth, 0, size)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """PROOF(old_size, D[size])."""
        self._check(size)
        if not 0 <= old_size <= size:
            raise ValueError(f"old size {old_size} outside 0..{size}")
        if old_size in (0, size):
            return []
        return _subproof(old_size, self._mth, 0, size, True)


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root)
    (RFC 9162 §2.1.4.2). Raises `ConsistencyProofInvalid` otherwise."""
    _check_hashes(proof, ConsistencyProofInvalid)
    if len(old_root) != HASH_LEN or len(new_root) != HASH_LEN:
        raise ConsistencyProofInvalid("root hashes are 32 bytes")
    if not 0 <= old_size <= new_size:
        raise ConsistencyProofInvalid(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if proof:
            raise ConsistencyProofInvalid("a proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ConsistencyProofInvalid("two trees of the same size have different roots")
        return
    if old_size == 0:
        if proof:
            raise ConsistencyProofInvalid("a proof from the empty tree must be empty")
        if not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise ConsistencyProofInvalid("the empty tree has another root")
        return
    if not proof:
        raise ConsistencyProofInvalid("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyProofInvalid("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyProofInvalid("the consistency proof is too short")
    if not hmac.compare_digest(fr, old_root):
        raise ConsistencyProofInvalid("the consistency proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise ConsistencyProofInvalid("the consistency proof does not lead to the new root")
