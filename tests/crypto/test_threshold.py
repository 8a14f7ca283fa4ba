"""Threshold OPRF (crypto/threshold.py): RFC 9497 VOPRF proof vectors, dealing and share
checks, combination equal to the single-key OPRF, and the attacks a client must survive
(bad partials, wrong commitments, too few or duplicated partials, a proof under another
node's key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pysodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import oprf, threshold
from backupvault.crypto.threshold import (
    Commitments,
    KeyShare,
    NotEnoughPartials,
    Partial,
    combine,
    deal,
    evaluate_partial,
    generate_proof,
    verify_partial,
    verify_proof,
    verify_share,
)
from backupvault.errors import AuthenticationFailed, InvalidInput

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "rfc9497_ristretto255_sha512_voprf.json").read_text()
)
SK = bytes.fromhex(VECTORS["key"]["sk"])
PK = bytes.fromhex(VECTORS["key"]["pk"])
VOPRF_HASH_TO_GROUP_DST = b"HashToGroup-" + threshold.VOPRF_CONTEXT_STRING
Q = oprf.GROUP_ORDER
PASSWORD = b"correct horse battery staple"


def _h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def _voprf_blind(data: bytes, blind: bytes) -> bytes:
    # RFC 9497 §3.3.1 Blind in VOPRF mode: the input is hashed with the mode-0x01 DST.
    return oprf.scalar_mult(blind, oprf.hash_to_group(data, VOPRF_HASH_TO_GROUP_DST))


def _scalar(value: int) -> bytes:
    return (value % Q).to_bytes(32, "little")


def _flip(data: bytes, position: int = 0) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


# --- RFC 9497 A.1.2 (VOPRF mode) --------------------------------------------------------


def test_voprf_context_string_is_rfc_suite() -> None:
    assert threshold.VOPRF_CONTEXT_STRING == b"OPRFV1-\x01-ristretto255-SHA512"


def test_vector_key_pair_matches() -> None:
    assert oprf.scalar_mult_base(SK) == PK


def test_there_are_three_voprf_vectors() -> None:
    # A.1.2 has two single vectors and one batch of two; guard against a truncated file.
    assert [len(v["input"]) for v in VECTORS["vectors"]] == [1, 1, 2]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_rfc9497_voprf_vector(vector: dict[str, Any]) -> None:
    inputs, blinds = _h(vector["input"]), _h(vector["blind"])
    blinded = [_voprf_blind(x, r) for x, r in zip(inputs, blinds, strict=True)]
    assert [b.hex() for b in blinded] == vector["blinded_element"]
    evaluated = [oprf.blind_evaluate(SK, b) for b in blinded]
    assert [e.hex() for e in evaluated] == vector["evaluation_element"]
    proof = generate_proof(
        SK,
        PK,
        blinded,
        evaluated,
        proof_random_scalar=bytes.fromhex(vector["proof_random_scalar"]),
    )
    assert proof.hex() == vector["proof"]
    assert verify_proof(PK, blinded, evaluated, proof)
    outputs = [oprf.finalize(x, r, e) for x, r, e in zip(inputs, blinds, evaluated, strict=True)]
    assert [o.hex() for o in outputs] == vector["output"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_rfc9497_voprf_vector_proof_refused_when_anything_changes(vector: dict[str, Any]) -> None:
    blinded = _h(vector["blinded_element"])
    evaluated = _h(vector["evaluation_element"])
    proof = bytes.fromhex(vector["proof"])
    assert not verify_proof(PK, blinded, evaluated, _flip(proof, 1))  # c
    assert not verify_proof(PK, blinded, evaluated, _flip(proof, 33))  # s
    other_pk = oprf.scalar_mult_base(_scalar(12345))
    assert not verify_proof(other_pk, blinded, evaluated, proof)
    wrong_evaluation = [oprf.scalar_mult(_scalar(7), evaluated[0]), *evaluated[1:]]
    assert not verify_proof(PK, blinded, wrong_evaluation, proof)
    # The proof is bound to the verifiable mode's context string.
    oprf_context = oprf.CONTEXT_STRING
    assert not verify_proof(PK, blinded, evaluated, proof, context=oprf_context)


def test_verify_proof_refuses_malformed_proofs() -> None:
    vector = VECTORS["vectors"][0]
    blinded, evaluated = _h(vector["blinded_element"]), _h(vector["evaluation_element"])
    proof = bytes.fromhex(vector["proof"])
    non_canonical = Q.to_bytes(32, "little")
    for bad in (
        proof[:63],
        proof + b"\x00",
        non_canonical + proof[32:],
        proof[:32] + non_canonical,
    ):
        assert not verify_proof(PK, blinded, evaluated, bad)
    with pytest.raises(InvalidInput):
        verify_proof(PK, [bytes(32)], evaluated, proof)  # identity as blinded element
    with pytest.raises(InvalidInput):
        verify_proof(PK, blinded, [], proof)


# --- dealing and share checks -----------------------------------------------------------


def test_deal_follows_the_polynomial() -> None:
    a = [_scalar(v) for v in (1234567, 89, 1011)]
    dealing = deal(3, 5, coefficients=a)
    assert dealing.key == a[0]
    for share in dealing.shares:
        x = share.index
        expected = (1234567 + 89 * x + 1011 * x * x) % Q
        assert share.scalar == _scalar(expected)
    assert dealing.commitments.elements == tuple(oprf.scalar_mult_base(c) for c in a)
    assert [s.index for s in dealing.shares] == [1, 2, 3, 4, 5]


def test_fresh_dealings_differ_and_every_share_verifies() -> None:
    first, second = deal(3, 5), deal(3, 5)
    assert first.key != second.key
    assert first.commitments != second.commitments
    for share in first.shares:
        verify_share(share, first.commitments)
        assert first.commitments.node_public_key(share.index) == share.public_key()


def test_share_against_a_wrong_commitment_set_is_refused() -> None:
    dealing, other = deal(3, 5), deal(3, 5)
    for share in dealing.shares:
        with pytest.raises(AuthenticationFailed, match=f"node {share.index}"):
            verify_share(share, other.commitments)


def test_a_node_key_is_computed_once_per_commitments_and_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dealing, other = deal(3, 5), deal(3, 5)
    products: list[bytes] = []
    real = oprf.scalar_mult

    def counted(scalar: bytes, element: bytes) -> bytes:
        products.append(element)
        return real(scalar, element)

    monkeypatch.setattr(oprf, "scalar_mult", counted)
    first = dealing.commitments.node_public_key(4)
    assert len(products) == 2  # t − 1
    # The same commitments parsed again (a fresh object), same index: remembered.
    again = Commitments.from_bytes(dealing.commitments.to_bytes()).node_public_key(4)
    assert again == first == dealing.shares[3].public_key()
    assert len(products) == 2
    # Another index, or other commitments: computed, and right.
    assert dealing.commitments.node_public_key(5) == dealing.shares[4].public_key()
    assert other.commitments.node_public_key(4) == other.shares[3].public_key()
    assert len(products) == 6


@pytest.mark.parametrize("position", [0, 1, 2])
def test_substituting_one_commitment_is_refused(position: int) -> None:
    dealing = deal(3, 5)
    elements = list(dealing.commitments.elements)
    elements[position] = oprf.scalar_mult_base(oprf.random_scalar())
    forged = Commitments(tuple(elements))
    for share in dealing.shares:
        with pytest.raises(AuthenticationFailed):
            verify_share(share, forged)


def test_a_share_for_another_slot_is_refused() -> None:
    dealing = deal(3, 5)
    moved = KeyShare(2, dealing.shares[0].scalar)
    with pytest.raises(AuthenticationFailed, match="node 2"):
        verify_share(moved, dealing.commitments)


def test_commitments_giving_a_node_the_identity_are_refused() -> None:
    # C_0 + 1·C_1 = identity: node 1's key would be the identity (k_1 = 0).
    point = oprf.scalar_mult_base(_scalar(5))
    negated = oprf.scalar_mult_base(_scalar(-5))
    commitments = Commitments((point, negated))
    with pytest.raises(InvalidInput, match="identity"):
        commitments.node_public_key(1)
    # Node 2's key is C_0 + 2·C_1 = 5G − 10G = −5G.
    assert commitments.node_public_key(2) == negated


@pytest.mark.parametrize(
    ("t", "n"), [(0, 5), (6, 5), (1, 0), (3, 256), (-1, 3)], ids=lambda v: str(v)
)
def test_impossible_thresholds_are_refused(t: int, n: int) -> None:
    with pytest.raises(InvalidInput):
        deal(t, n)


def test_given_coefficients_are_validated() -> None:
    with pytest.raises(InvalidInput):
        deal(2, 3, coefficients=[_scalar(1)])
    with pytest.raises(InvalidInput):
        deal(2, 3, coefficients=[_scalar(1), bytes(32)])  # degree must be exactly t−1
    # f(x) = 2 − 2x is zero at x = 1: that node's key would be the identity.
    with pytest.raises(InvalidInput, match="zero share"):
        deal(2, 3, coefficients=[_scalar(2), _scalar(-2)])


# --- combination ------------------------------------------------------------------------


def _recover(
    dealing: threshold.Dealing, indices: list[int], password: bytes = PASSWORD
) -> tuple[bytes, threshold.Combination]:
    blind, blinded = oprf.blind(password)
    partials = [evaluate_partial(dealing.shares[i - 1], blinded) for i in indices]
    combination = combine(dealing.commitments, blinded, partials)
    return oprf.finalize(password, blind, combination.evaluated), combination


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_combined_output_equals_single_key_evaluation(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 7), label="n")
    t = data.draw(st.integers(1, n), label="t")
    dealing = deal(t, n)
    indices = data.draw(
        st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True), label="nodes"
    )
    password = data.draw(st.binary(max_size=40), label="password")
    output, combination = _recover(dealing, indices, password)
    assert output == oprf.evaluate(dealing.key, password)
    assert combination.rejected == ()
    assert combination.used == tuple(sorted(indices)[:t])


def test_two_different_majorities_give_the_same_output() -> None:
    dealing = deal(3, 5)
    first, _ = _recover(dealing, [1, 2, 3])
    second, _ = _recover(dealing, [3, 4, 5])
    assert first == second == oprf.evaluate(dealing.key, PASSWORD)


def test_a_bad_partial_is_detected_and_the_node_named() -> None:
    dealing = deal(3, 5)
    blind, blinded = oprf.blind(PASSWORD)
    partials = [evaluate_partial(s, blinded) for s in dealing.shares[:4]]
    # Node 2 evaluates with a key of its own choosing and proves that honestly: the proof
    # is valid, but for a key that is not K_2 from the commitments.
    rogue = KeyShare(2, oprf.random_scalar())
    partials[1] = evaluate_partial(rogue, blinded)
    combination = combine(dealing.commitments, blinded, partials)
    assert combination.rejected == (2,)
    assert combination.used == (1, 3, 4)
    assert oprf.finalize(PASSWORD, blind, combination.evaluated) == oprf.evaluate(
        dealing.key, PASSWORD
    )


def test_a_partial_for_another_blinded_element_is_rejected() -> None:
    dealing = deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    _, other = oprf.blind(PASSWORD)
    partials = [evaluate_partial(s, blinded) for s in dealing.shares[:3]]
    partials.append(evaluate_partial(dealing.shares[3], other))  # replayed from elsewhere
    assert combine(dealing.commitments, blinded, partials).rejected == (4,)


def test_a_tampered_evaluation_with_the_honest_proof_is_rejected() -> None:
    dealing = deal(2, 3)
    _, blinded = oprf.blind(PASSWORD)
    honest = evaluate_partial(dealing.shares[0], blinded)
    shifted = Partial(1, oprf.scalar_mult(_scalar(2), honest.evaluated), honest.proof)
    assert not verify_partial(dealing.commitments, blinded, shifted)


def test_too_many_bad_partials_fail_naming_the_nodes() -> None:
    dealing = deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    partials = [evaluate_partial(s, blinded) for s in dealing.shares]
    partials[0] = evaluate_partial(KeyShare(1, oprf.random_scalar()), blinded)
    partials[4] = evaluate_partial(KeyShare(5, oprf.random_scalar()), blinded)
    partials[2] = evaluate_partial(KeyShare(3, oprf.random_scalar()), blinded)
    with pytest.raises(NotEnoughPartials, match="nodes 1, 3, 5") as caught:
        combine(dealing.commitments, blinded, partials)
    assert caught.value.rejected == (1, 3, 5)


def test_partials_against_a_wrong_commitment_set_are_refused() -> None:
    dealing, other = deal(3, 5), deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    partials = [evaluate_partial(s, blinded) for s in dealing.shares]
    with pytest.raises(NotEnoughPartials) as caught:
        combine(other.commitments, blinded, partials)
    assert caught.value.rejected == (1, 2, 3, 4, 5)


def test_fewer_than_t_partials_are_refused() -> None:
    dealing = deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    partials = [evaluate_partial(s, blinded) for s in dealing.shares[:2]]
    with pytest.raises(NotEnoughPartials) as caught:
        combine(dealing.commitments, blinded, partials)
    assert caught.value.message == "need 3 valid partial evaluations, have 2"
    assert caught.value.rejected == ()


def test_duplicate_indices_are_refused() -> None:
    dealing = deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    partial = evaluate_partial(dealing.shares[0], blinded)
    others = [evaluate_partial(s, blinded) for s in dealing.shares[1:3]]
    with pytest.raises(InvalidInput, match=r"from node 1$"):
        combine(dealing.commitments, blinded, [partial, *others, partial])
    with pytest.raises(InvalidInput, match="distinct"):
        threshold.lagrange_coefficients([1, 2, 2])


def test_a_proof_does_not_verify_under_another_node_key() -> None:
    dealing = deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    partial = evaluate_partial(dealing.shares[0], blinded)
    assert verify_partial(dealing.commitments, blinded, partial)
    for other in range(2, 6):
        key = dealing.commitments.node_public_key(other)
        assert not verify_proof(key, [blinded], [partial.evaluated], partial.proof)
        relabelled = Partial(other, partial.evaluated, partial.proof)
        assert not verify_partial(dealing.commitments, blinded, relabelled)


def test_lagrange_coefficients_reconstruct_at_zero() -> None:
    # f(x) = 7 + 3x + 5x², any three points give f(0) = 7.
    for indices in ([1, 2, 3], [2, 4, 5], [5, 1, 3]):
        weights = threshold.lagrange_coefficients(indices)
        values = [(7 + 3 * x + 5 * x * x) for x in indices]
        assert sum(w * v for w, v in zip(weights, values, strict=True)) % Q == 7


# --- hedged proof nonce -----------------------------------------------------------------


def test_proof_nonce_is_hedged() -> None:
    share = deal(2, 3).shares[0]
    _, blinded = oprf.blind(PASSWORD)
    _, other = oprf.blind(PASSWORD)
    fixed = bytes(32)
    # A stuck random source still gives different nonces for different B …
    assert threshold.hedged_proof_nonce(share.scalar, [blinded], fixed) != (
        threshold.hedged_proof_nonce(share.scalar, [other], fixed)
    )
    # … and for different keys, and the proof is deterministic only in all three inputs.
    assert threshold.hedged_proof_nonce(share.scalar, [blinded], fixed) != (
        threshold.hedged_proof_nonce(oprf.random_scalar(), [blinded], fixed)
    )
    same = [evaluate_partial(share, blinded, randomness=fixed) for _ in range(2)]
    assert same[0] == same[1]
    fresh = [evaluate_partial(share, blinded) for _ in range(2)]
    assert fresh[0].proof != fresh[1].proof
    with pytest.raises(InvalidInput):
        threshold.hedged_proof_nonce(share.scalar, [blinded], bytes(31))


# --- encodings and validation -----------------------------------------------------------


def test_encodings_round_trip() -> None:
    dealing = deal(3, 5)
    _, blinded = oprf.blind(PASSWORD)
    share = dealing.shares[4]
    assert KeyShare.from_bytes(share.to_bytes()) == share
    assert len(share.to_bytes()) == KeyShare.ENCODED_LEN == 33
    assert Commitments.from_bytes(dealing.commitments.to_bytes()) == dealing.commitments
    assert len(dealing.commitments.to_bytes()) == 96
    partial = evaluate_partial(share, blinded)
    assert Partial.from_bytes(partial.to_bytes()) == partial
    assert len(partial.to_bytes()) == Partial.ENCODED_LEN == 97


NON_CANONICAL = (2**255 - 19).to_bytes(32, "little")
BAD_ELEMENTS = [bytes(32), NON_CANONICAL, (1).to_bytes(32, "little"), b"\xff" * 32, bytes(31)]


@pytest.mark.parametrize("element", BAD_ELEMENTS, ids=lambda e: e.hex()[:12])
def test_bad_elements_are_refused_everywhere(element: bytes) -> None:
    dealing = deal(2, 3)
    _, blinded = oprf.blind(PASSWORD)
    with pytest.raises(InvalidInput):
        evaluate_partial(dealing.shares[0], element)
    with pytest.raises(InvalidInput):
        Commitments((dealing.commitments.elements[0], element))
    with pytest.raises(InvalidInput):
        Partial(1, element, bytes(64))
    good = [evaluate_partial(s, blinded) for s in dealing.shares]
    with pytest.raises(InvalidInput):
        combine(dealing.commitments, element, good)


def test_bad_scalars_indices_and_lengths_are_refused() -> None:
    for scalar in (bytes(32), Q.to_bytes(32, "little"), b"\xff" * 32, bytes(31)):
        with pytest.raises(InvalidInput):
            KeyShare(1, scalar)
    for index in (0, 256, -1):
        with pytest.raises(InvalidInput):
            KeyShare(index, _scalar(3))
    with pytest.raises(InvalidInput):
        KeyShare.from_bytes(bytes(32))
    with pytest.raises(InvalidInput):
        Commitments.from_bytes(bytes(0))
    with pytest.raises(InvalidInput):
        Commitments.from_bytes(oprf.scalar_mult_base(_scalar(3)) + b"\x01")
    with pytest.raises(InvalidInput):
        Commitments(())
    with pytest.raises(InvalidInput):
        Partial.from_bytes(bytes(96))
    point = oprf.scalar_mult_base(_scalar(3))
    with pytest.raises(InvalidInput):
        Partial(1, point, bytes(63))
    with pytest.raises(InvalidInput):
        Partial(0, point, bytes(64))


def test_secrets_stay_out_of_repr() -> None:
    dealing = deal(2, 3)
    for text in (repr(dealing), repr(dealing.shares[0])):
        assert dealing.key.hex() not in text
        assert dealing.shares[0].scalar.hex() not in text
        assert "hidden" in text


def test_libsodium_add_is_the_group_law() -> None:
    # The combination relies on ristretto255 addition; check it against scalar arithmetic.
    a, b = _scalar(11), _scalar(31)
    total = pysodium.crypto_core_ristretto255_add(
        oprf.scalar_mult_base(a), oprf.scalar_mult_base(b)
    )
    assert total == oprf.scalar_mult_base(_scalar(42))
