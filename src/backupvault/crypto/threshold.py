"""Threshold OPRF over ristretto255: Shamir shares of the OPRF key, Feldman commitments,
RFC 9497 VOPRF proofs per partial evaluation, and Lagrange combination.

Why: with one OPRF key per entry held by every node, whoever controls one node host can
test passwords offline. Here the client shares a fresh key k among N nodes so that any t
of them together evaluate k·B, and fewer than t learn nothing about k from their shares
(docs/threshold.md has the protocol, the bound and the threat table).

- Dealing (client, at registration): k = a_0 and a random polynomial
  f(x) = a_0 + a_1·x + … + a_{t−1}·x^{t−1} over the scalar field; node i gets k_i = f(i)
  and everyone gets the Feldman commitments C_j = a_j·G.
- A node checks its share against the commitments (k_i·G = Σ_j C_j·i^j) before storing it.
- A node answers a blinded element B with Z_i = k_i·B and an RFC 9497 §2.2 proof that
  log_G(K_i) = log_B(Z_i), made with the VOPRF-mode context string. Its nonce is hedged:
  r = H(k_i ‖ B ‖ 32 fresh random bytes), so a bad random source alone does not leak k_i.
- The client checks each proof against K_i computed from the agreed commitments (never a
  key the node sends), drops and names bad partials, combines t good ones with Lagrange
  coefficients at x = 0 into k·B, and finalizes in plain OPRF mode (`oprf.finalize`), so
  the output is exactly RFC 9497's OPRF output under k.

Pure: no I/O, no global state. Randomness comes from libsodium's CSPRNG or `os.urandom`
unless the caller passes it in (the RFC vectors do). Secret scalar arithmetic uses
libsodium; only public values (indices, Lagrange coefficients) use Python integers.
Every element from outside must be a canonical, non-identity ristretto255 encoding and
every scalar canonical and non-zero (`oprf.validate_element`, `oprf.validate_scalar`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pysodium

from backupvault.crypto import oprf
from backupvault.errors import AuthenticationFailed, InvalidInput

MODE_VOPRF = 0x01
# RFC 9497 §3.1: the proof transcripts of the verifiable mode use this context string.
VOPRF_CONTEXT_STRING = b"OPRFV1-" + bytes([MODE_VOPRF]) + b"-" + oprf.SUITE_ID
PROOF_LEN = 2 * oprf.SCALAR_LEN  # c ‖ s
NONCE_RANDOMNESS_LEN = 32
# Share indices are 1..255: one byte on the wire, and never 0 (f(0) is the key itself).
MAX_NODES = 255
# Our own label for the hedged proof nonce (not in the RFC, which draws r at random).
_PROOF_NONCE_DST = b"BackupVault-ThresholdOPRF-ProofNonce-v1"

_Q = oprf.GROUP_ORDER
_IDENTITY = bytes(oprf.ELEMENT_LEN)


class NotEnoughPartials(AuthenticationFailed):
    """Fewer than t partial evaluations verified. `rejected` names the nodes whose partial
    did not verify against their commitment-derived key."""

    def __init__(self, message: str, *, rejected: tuple[int, ...]) -> None:
        super().__init__(
            message,
            hint="try again when more vault nodes answer; report the named nodes to the operator",
        )
        self.rejected = rejected


# --- group helpers ----------------------------------------------------------------------


def _scalar_bytes(value: int) -> bytes:
    return (value % _Q).to_bytes(oprf.SCALAR_LEN, "little")


def _is_zero(scalar: bytes) -> bool:
    return not any(scalar)


def _mul(scalar: bytes, element: bytes) -> bytes:
    """scalar·element, allowing a zero scalar (→ identity); only for the proof equations,
    where the RFC's arithmetic admits it with negligible probability."""
    if _is_zero(scalar) or element == _IDENTITY:
        return _IDENTITY
    return oprf.scalar_mult(scalar, element)


def _mul_base(scalar: bytes) -> bytes:
    if _is_zero(scalar):
        return _IDENTITY
    return oprf.scalar_mult_base(scalar)


def _add(a: bytes, b: bytes) -> bytes:
    return bytes(pysodium.crypto_core_ristretto255_add(a, b))


def _sum(elements: Sequence[bytes]) -> bytes:
    total = _IDENTITY
    for element in elements:
        total = _add(total, element)
    return total


def _len_prefixed(data: bytes) -> bytes:
    return oprf.i2osp(len(data), 2) + data


def _check_index(index: object, what: str = "share index") -> int:
    if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index <= MAX_NODES:
        raise InvalidInput(f"{what}: must be an integer 1..{MAX_NODES}, got {index!r}")
    return index


def _canonical_scalar(data: bytes, what: str) -> bytes:
    """A canonical scalar (< q) that may be zero: proof scalars c and s."""
    if len(data) != oprf.SCALAR_LEN or int.from_bytes(data, "little") >= _Q:
        raise InvalidInput(f"{what}: not a canonical scalar")
    return bytes(data)


# --- shares and commitments -------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class KeyShare:
    """Node `index`'s share k_i = f(index). Encoding (33 bytes): index u8 ‖ k_i (32, LE)."""

    index: int
    scalar: bytes

    ENCODED_LEN: ClassVar[int] = 1 + oprf.SCALAR_LEN

    def __post_init__(self) -> None:
        _check_index(self.index)
        oprf.validate_scalar(self.scalar, f"share of node {self.index}")

    def __repr__(self) -> str:
        return f"KeyShare(index={self.index}, <secret hidden>)"

    def public_key(self) -> bytes:
        """K_i = k_i·G."""
        return oprf.scalar_mult_base(self.scalar)

    def to_bytes(self) -> bytes:
        return bytes([self.index]) + self.scalar

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        if not isinstance(data, bytes | bytearray) or len(data) != cls.ENCODED_LEN:
            raise InvalidInput(f"key share: expected {cls.ENCODED_LEN} bytes")
        return cls(data[0], bytes(data[1:]))


@dataclass(frozen=True)
class Commitments:
    """Feldman commitments C_0 … C_{t−1} (C_j = a_j·G); t = len(elements).
    Encoding: the t elements concatenated (32·t bytes)."""

    elements: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.elements, tuple) or not 1 <= len(self.elements) <= MAX_NODES:
            raise InvalidInput(f"commitments: need a tuple of 1..{MAX_NODES} elements")
        for j, element in enumerate(self.elements):
            oprf.validate_element(element, f"commitment C_{j}")

    @property
    def threshold(self) -> int:
        return len(self.elements)

    @property
    def public_key(self) -> bytes:
        """C_0 = k·G, the public key of the whole (unshared) OPRF key."""
        return self.elements[0]

    def node_public_key(self, index: int) -> bytes:
        """K_i = Σ_j C_j·i^j. Raises InvalidInput if the commitments give node `index` the
        identity as key (impossible for honest commitments: it would mean k_i = 0)."""
        _check_index(index, "node index")
        return _node_public_key(self.elements, index)

    def to_bytes(self) -> bytes:
        return b"".join(self.elements)

    @classmethod
    def from_bytes(cls, data: bytes) -> Commitments:
        size = oprf.ELEMENT_LEN
        if not isinstance(data, bytes | bytearray) or not data or len(data) % size:
            raise InvalidInput(f"commitments: expected a non-empty multiple of {size} bytes")
        return cls(tuple(bytes(data[i : i + size]) for i in range(0, len(data), size)))


@dataclass(frozen=True, repr=False)
class Dealing:
    """What the client deals at registration: the key k (to compute the OPRF output
    itself, then drop), one share per node, and the commitments."""

    key: bytes
    shares: tuple[KeyShare, ...]
    commitments: Commitments

    def __repr__(self) -> str:
        return f"Dealing(t={self.commitments.threshold}, n={len(self.shares)}, <secrets hidden>)"


@functools.lru_cache(maxsize=4096)
def _node_public_key(elements: tuple[bytes, ...], index: int) -> bytes:
    """Remembered: a recovery checks each node's proof against K_i, and each commit
    acknowledgement a node verifies names one, t − 1 scalar multiplications each time, for
    the same manifest (public values only: the cache holds nothing secret)."""
    terms = [elements[0]]
    for j in range(1, len(elements)):
        terms.append(oprf.scalar_mult(_scalar_bytes(pow(index, j, _Q)), elements[j]))
    key = _sum(terms)
    if key == _IDENTITY:
        raise InvalidInput(f"commitments give node {index} the identity as its key")
    return key


def named_nodes(indices: Sequence[int]) -> str:
    """ "node 2" or "nodes 1, 4", as the numbers go."""
    return ("node " if len(indices) == 1 else "nodes ") + ", ".join(map(str, indices))


def _evaluate_polynomial(coefficients: Sequence[bytes], x: int) -> bytes:
    """f(x) by Horner's rule, in libsodium's scalar arithmetic (the coefficients are secret)."""
    x_scalar = _scalar_bytes(x)
    value = bytes(oprf.SCALAR_LEN)
    for coefficient in reversed(coefficients):
        value = bytes(pysodium.crypto_core_ristretto255_scalar_mul(value, x_scalar))
        value = bytes(pysodium.crypto_core_ristretto255_scalar_add(value, coefficient))
    return value


def check_threshold(threshold: int, nodes: int) -> None:
    """1 ≤ t ≤ n ≤ 255."""
    for name, value in (("threshold", threshold), ("node count", nodes)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{name} must be an integer")
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidInput(f"node count must be 1..{MAX_NODES}, got {nodes}")
    if not 1 <= threshold <= nodes:
        raise InvalidInput(f"threshold must be 1..{nodes} (the node count), got {threshold}")


def deal(threshold: int, nodes: int, *, coefficients: Sequence[bytes] | None = None) -> Dealing:
    """Shamir-share a fresh OPRF key among `nodes` nodes (indices 1..nodes), any
    `threshold` of which can evaluate. `coefficients` (a_0 = k, …, a_{t−1}; all non-zero,
    so the degree is exactly t−1 and no commitment is the identity) only for tests; by
    default they come from libsodium's CSPRNG."""
    check_threshold(threshold, nodes)
    while True:
        if coefficients is None:
            polynomial = [oprf.random_scalar() for _ in range(threshold)]
        else:
            if len(coefficients) != threshold:
                raise InvalidInput(f"need {threshold} coefficients, got {len(coefficients)}")
            polynomial = [
                oprf.validate_scalar(a, f"coefficient a_{j}") for j, a in enumerate(coefficients)
            ]
        values = [_evaluate_polynomial(polynomial, i) for i in range(1, nodes + 1)]
        if all(not _is_zero(v) for v in values):
            break
        # A zero share (probability about n/2^252) would make K_i the identity.
        if coefficients is not None:
            raise InvalidInput("these coefficients give some node a zero share")
    shares = tuple(KeyShare(i, v) for i, v in enumerate(values, start=1))
    commitments = Commitments(tuple(oprf.scalar_mult_base(a) for a in polynomial))
    return Dealing(polynomial[0], shares, commitments)


def verify_share(share: KeyShare, commitments: Commitments) -> None:
    """A node's check before it stores its share: k_i·G = Σ_j C_j·i^j.
    Raises AuthenticationFailed if the share does not match."""
    expected = commitments.node_public_key(share.index)
    if not hmac.compare_digest(share.public_key(), expected):
        raise AuthenticationFailed(
            f"the share for node {share.index} does not match the manifest's commitments"
        )


# --- RFC 9497 §2.2 proofs ---------------------------------------------------------------


def _composites(
    public_key: bytes,
    blinded: Sequence[bytes],
    evaluated: Sequence[bytes],
    context: bytes,
    key: bytes | None,
) -> tuple[bytes, bytes]:
    """ComputeComposites (verifier, key=None) and ComputeCompositesFast (prover)."""
    seed_dst = b"Seed-" + context
    seed = hashlib.sha512(_len_prefixed(public_key) + _len_prefixed(seed_dst)).digest()
    m_terms: list[bytes] = []
    z_terms: list[bytes] = []
    for i, (c_i, d_i) in enumerate(zip(blinded, evaluated, strict=True)):
        transcript = (
            _len_prefixed(seed)
            + oprf.i2osp(i, 2)
            + _len_prefixed(c_i)
            + _len_prefixed(d_i)
            + b"Composite"
        )
        weight = oprf.hash_to_scalar(transcript, b"HashToScalar-" + context)
        m_terms.append(_mul(weight, c_i))
        if key is None:
            z_terms.append(_mul(weight, d_i))
    m = _sum(m_terms)
    z = _mul(key, m) if key is not None else _sum(z_terms)
    return m, z


def _challenge(
    public_key: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes, context: bytes
) -> bytes:
    transcript = b"".join(_len_prefixed(x) for x in (public_key, m, z, t2, t3)) + b"Challenge"
    return oprf.hash_to_scalar(transcript, b"HashToScalar-" + context)


def _check_batch(blinded: Sequence[bytes], evaluated: Sequence[bytes]) -> None:
    if not blinded or len(blinded) != len(evaluated) or len(blinded) > 0xFFFF:
        raise InvalidInput("proof: need 1..65535 blinded elements and as many evaluated ones")
    for element in blinded:
        oprf.validate_element(element, "blinded element")
    for element in evaluated:
        oprf.validate_element(element, "evaluated element")


def hedged_proof_nonce(key: bytes, blinded: Sequence[bytes], randomness: bytes) -> bytes:
    """r = H(k_i ‖ B_1 ‖ … ‖ B_m ‖ randomness), reduced to a scalar: random if the random
    source is good, and still never repeated for two different B under one key if not."""
    if len(randomness) != NONCE_RANDOMNESS_LEN:
        raise InvalidInput(f"proof nonce randomness: expected {NONCE_RANDOMNESS_LEN} bytes")
    return oprf.hash_to_scalar(key + b"".join(blinded) + randomness, _PROOF_NONCE_DST)


def generate_proof(
    key: bytes,
    public_key: bytes,
    blinded: Sequence[bytes],
    evaluated: Sequence[bytes],
    *,
    context: bytes = VOPRF_CONTEXT_STRING,
    randomness: bytes | None = None,
    proof_random_scalar: bytes | None = None,
) -> bytes:
    """GenerateProof (RFC 9497 §2.2.1) with A = G, B = `public_key`, batched over
    (blinded[i], evaluated[i]). Returns c ‖ s (64 bytes).

    The nonce is `hedged_proof_nonce(key, blinded, randomness)` with 32 bytes of
    `randomness` from os.urandom unless given; `proof_random_scalar` sets r directly and
    exists only for the RFC vectors."""
    oprf.validate_scalar(key, "proof key")
    oprf.validate_element(public_key, "proof public key")
    _check_batch(blinded, evaluated)
    if proof_random_scalar is not None:
        r = oprf.validate_scalar(proof_random_scalar, "proof random scalar")
    else:
        fresh = os.urandom(NONCE_RANDOMNESS_LEN) if randomness is None else randomness
        r = hedged_proof_nonce(key, blinded, fresh)
    m, z = _composites(public_key, blinded, evaluated, context, key)
    t2 = oprf.scalar_mult_base(r)
    t3 = _mul(r, m)
    c = _challenge(public_key, m, z, t2, t3, context)
    s = bytes(
        pysodium.crypto_core_ristretto255_scalar_sub(
            r, pysodium.crypto_core_ristretto255_scalar_mul(c, key)
        )
    )
    return c + s


def verify_proof(
    public_key: bytes,
    blinded: Sequence[bytes],
    evaluated: Sequence[bytes],
    proof: bytes,
    *,
    context: bytes = VOPRF_CONTEXT_STRING,
) -> bool:
    """VerifyProof (RFC 9497 §2.2.2). False for a proof that does not verify or is not
    64 bytes of two canonical scalars; InvalidInput for bad elements."""
    oprf.validate_element(public_key, "proof public key")
    _check_batch(blinded, evaluated)
    if not isinstance(proof, bytes | bytearray) or len(proof) != PROOF_LEN:
        return False
    try:
        c = _canonical_scalar(proof[: oprf.SCALAR_LEN], "proof c")
        s = _canonical_scalar(proof[oprf.SCALAR_LEN :], "proof s")
    except InvalidInput:
        return False
    m, z = _composites(public_key, blinded, evaluated, context, None)
    t2 = _add(_mul_base(s), _mul(c, public_key))
    t3 = _add(_mul(s, m), _mul(c, z))
    expected = _challenge(public_key, m, z, t2, t3, context)
    return hmac.compare_digest(expected, c)


# --- partial evaluations and combination ------------------------------------------------


@dataclass(frozen=True)
class Partial:
    """Node `index`'s answer: Z_i = k_i·B and its proof.
    Encoding (97 bytes): index u8 ‖ Z_i (32) ‖ proof c ‖ s (64)."""

    index: int
    evaluated: bytes
    proof: bytes

    ENCODED_LEN: ClassVar[int] = 1 + oprf.ELEMENT_LEN + PROOF_LEN

    def __post_init__(self) -> None:
        _check_index(self.index, "partial's node index")
        oprf.validate_element(self.evaluated, f"partial evaluation of node {self.index}")
        if not isinstance(self.proof, bytes) or len(self.proof) != PROOF_LEN:
            raise InvalidInput(f"proof of node {self.index}: expected {PROOF_LEN} bytes")

    def to_bytes(self) -> bytes:
        return bytes([self.index]) + self.evaluated + self.proof

    @classmethod
    def from_bytes(cls, data: bytes) -> Partial:
        if not isinstance(data, bytes | bytearray) or len(data) != cls.ENCODED_LEN:
            raise InvalidInput(f"partial evaluation: expected {cls.ENCODED_LEN} bytes")
        end = 1 + oprf.ELEMENT_LEN
        return cls(data[0], bytes(data[1:end]), bytes(data[end:]))


def evaluate_partial(
    share: KeyShare, blinded: bytes, *, randomness: bytes | None = None
) -> Partial:
    """The node's evaluation: k_i·B with a proof under K_i = k_i·G. The caller must have
    made its own checks first (docs/threshold.md: the attempt it accepted for this B)."""
    oprf.validate_element(blinded, "blinded element")
    evaluated = oprf.scalar_mult(share.scalar, blinded)
    proof = generate_proof(
        share.scalar, share.public_key(), [blinded], [evaluated], randomness=randomness
    )
    return Partial(share.index, evaluated, proof)


def verify_partial(commitments: Commitments, blinded: bytes, partial: Partial) -> bool:
    """The partial's proof verifies against K_i from the commitments (never a key the node
    sends). InvalidInput if the commitments give this node no valid key."""
    key = commitments.node_public_key(partial.index)
    return verify_proof(key, [blinded], [partial.evaluated], partial.proof)


def lagrange_coefficients(indices: Sequence[int]) -> list[int]:
    """λ_i = Π_{j≠i} j / (j − i) mod q: f(0) = Σ λ_i·f(i) for a polynomial of degree
    < len(indices). Indices must be distinct, 1..255."""
    for index in indices:
        _check_index(index)
    if len(set(indices)) != len(indices):
        raise InvalidInput("share indices must be distinct")
    coefficients = []
    for i in indices:
        numerator, denominator = 1, 1
        for j in indices:
            if j != i:
                numerator = numerator * j % _Q
                denominator = denominator * (j - i) % _Q
        coefficients.append(numerator * pow(denominator, -1, _Q) % _Q)
    return coefficients


@dataclass(frozen=True)
class Combination:
    """k·B from t verified partials; `used` the nodes combined, `rejected` the nodes whose
    partial did not verify (to report)."""

    evaluated: bytes
    used: tuple[int, ...]
    rejected: tuple[int, ...]


def combine(commitments: Commitments, blinded: bytes, partials: Sequence[Partial]) -> Combination:
    """Check every partial against the commitments, drop and name the bad ones, and
    combine the first t good ones (by index) into k·B with Lagrange coefficients at 0.

    The caller sets each partial's index from the node it came from (its sealed channel),
    so that a rejection names the node that sent it. Raises InvalidInput for duplicate
    node indices, NotEnoughPartials if fewer than t partials verify."""
    oprf.validate_element(blinded, "blinded element")
    indices = [p.index for p in partials]
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise InvalidInput(f"more than one partial evaluation from {named_nodes(duplicates)}")
    good: list[Partial] = []
    rejected: list[int] = []
    for partial in sorted(partials, key=lambda p: p.index):
        if verify_partial(commitments, blinded, partial):
            good.append(partial)
        else:
            rejected.append(partial.index)
    t = commitments.threshold
    if len(good) < t:
        named = f"; {named_nodes(rejected)} sent a partial that does not verify" if rejected else ""
        raise NotEnoughPartials(
            f"need {t} valid partial evaluations, have {len(good)}{named}",
            rejected=tuple(rejected),
        )
    chosen = good[:t]
    weights = lagrange_coefficients([p.index for p in chosen])
    terms = [
        oprf.scalar_mult(_scalar_bytes(w), p.evaluated)
        for w, p in zip(weights, chosen, strict=True)
    ]
    evaluated = oprf.validate_element(_sum(terms), "combined evaluation")
    return Combination(evaluated, tuple(p.index for p in chosen), tuple(rejected))
