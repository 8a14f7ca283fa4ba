"""Key stretching: Argon2id parameters, their encoding, and the identity KSF."""

from __future__ import annotations

import dataclasses

import pytest
from argon2.low_level import Type, hash_secret_raw
from hypothesis import given, settings
from hypothesis import strategies as st

from backupvault.crypto import ksf
from backupvault.crypto.ksf import Argon2idParams
from backupvault.errors import InvalidInput

TINY = Argon2idParams(memory_kib=8, iterations=1, parallelism=1, salt=bytes(8), output_len=64)


def test_identity_ksf_is_identity() -> None:
    assert ksf.stretch(ksf.IDENTITY_KSF, b"abc") == b"abc"


def test_opaque_ke_constant() -> None:
    params = ksf.OPAQUE_KE_ARGON2ID
    assert (params.memory_kib, params.iterations, params.parallelism) == (19456, 2, 1)
    assert params.salt == bytes(16)
    assert params.output_len == 64


def test_default_encoding_is_exact() -> None:
    # 64 MiB, t=3, p=1, 64-byte output, 16 zero bytes of salt; layout documented in ksf.py.
    expected = bytes.fromhex("010001000000000003010040000010") + bytes(16)
    assert ksf.DEFAULT_ARGON2ID.to_bytes() == expected
    assert Argon2idParams.from_bytes(expected) == ksf.DEFAULT_ARGON2ID


def test_default_stretch_cost_is_production_grade() -> None:
    # The one use of the production default in the suite: 64 bytes, deterministic, and
    # distinct from opaque-ke's lighter setting.
    out = ksf.stretch(ksf.DEFAULT_ARGON2ID, b"oprf output")
    assert len(out) == 64
    assert out != ksf.stretch(ksf.OPAQUE_KE_ARGON2ID, b"oprf output")
    assert ksf.DEFAULT_ARGON2ID.memory_kib >= 64 * 1024
    assert ksf.DEFAULT_ARGON2ID.iterations >= 3


def test_stretch_is_argon2id_v13() -> None:
    expected = hash_secret_raw(
        secret=b"pw",
        salt=bytes(8),
        time_cost=1,
        memory_cost=8,
        parallelism=1,
        hash_len=64,
        type=Type.ID,
        version=0x13,
    )
    assert ksf.stretch(TINY, b"pw") == expected
    # An Argon2i or Argon2d digest with the same parameters differs.
    for other in (Type.I, Type.D):
        assert expected != hash_secret_raw(
            secret=b"pw", salt=bytes(8), time_cost=1, memory_cost=8, parallelism=1,
            hash_len=64, type=other, version=0x13,
        )  # fmt: skip


def test_every_parameter_changes_the_output() -> None:
    base = ksf.stretch(TINY, b"pw")
    variants = [
        dataclasses.replace(TINY, memory_kib=16),
        dataclasses.replace(TINY, iterations=2),
        dataclasses.replace(TINY, parallelism=2, memory_kib=16),
        dataclasses.replace(TINY, salt=b"\x01" + bytes(7)),
    ]
    outputs = {ksf.stretch(v, b"pw") for v in variants}
    assert base not in outputs
    assert len(outputs) == len(variants)
    assert len(ksf.stretch(dataclasses.replace(TINY, output_len=32), b"pw")) == 32


@pytest.mark.parametrize(
    "changes",
    [
        {"memory_kib": 7},
        {"memory_kib": 15, "parallelism": 2},
        {"memory_kib": Argon2idParams.MAX_MEMORY_KIB + 1},
        {"iterations": 0},
        {"iterations": Argon2idParams.MAX_ITERATIONS + 1},
        {"parallelism": 0},
        {"parallelism": 65, "memory_kib": 65 * 8},
        {"salt": bytes(7)},
        {"salt": bytes(65)},
        {"output_len": 15},
        {"output_len": 1025},
        # Each bound alone allows it; together an hour of a client's CPU.
        {"memory_kib": Argon2idParams.MAX_MEMORY_KIB, "iterations": Argon2idParams.MAX_ITERATIONS},
        {"memory_kib": 64 * 1024 * 1024 // 1000 + 1024, "iterations": 1000},
    ],
)
def test_out_of_bounds_parameters_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        dataclasses.replace(TINY, **changes)  # type: ignore[arg-type]


def test_salt_must_be_bytes() -> None:
    with pytest.raises(InvalidInput):
        Argon2idParams(memory_kib=8, iterations=1, parallelism=1, salt="saltsalt")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes", [{"iterations": "3"}, {"memory_kib": 8.0}, {"parallelism": True}]
)
def test_non_integer_parameters_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidInput, match="integer"):
        dataclasses.replace(TINY, **changes)  # type: ignore[arg-type]


def test_from_bytes_needs_bytes() -> None:
    with pytest.raises(InvalidInput):
        Argon2idParams.from_bytes(TINY.to_bytes().hex())  # type: ignore[arg-type]


def test_encoding_rejects_bad_tag_reserved_and_length() -> None:
    good = TINY.to_bytes()
    assert Argon2idParams.from_bytes(good) == TINY
    with pytest.raises(InvalidInput, match="format tag"):
        Argon2idParams.from_bytes(b"\x02" + good[1:])
    with pytest.raises(InvalidInput, match="reserved"):
        Argon2idParams.from_bytes(good[:12] + b"\x00\x01" + good[14:])
    with pytest.raises(InvalidInput):
        Argon2idParams.from_bytes(good + b"\x00")
    with pytest.raises(InvalidInput):
        Argon2idParams.from_bytes(good[:-1])
    with pytest.raises(InvalidInput):
        Argon2idParams.from_bytes(good[:10])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=80),
        st.builds(lambda tail: b"\x01" + tail, st.binary(min_size=14, max_size=40)),
    )
)
def test_from_bytes_fuzz_only_invalid_input(data: bytes) -> None:
    try:
        params = Argon2idParams.from_bytes(data)
    except InvalidInput:
        return
    assert params.to_bytes() == data


@settings(max_examples=100, deadline=None)
@given(
    memory=st.integers(min_value=8 * 64, max_value=Argon2idParams.MAX_MEMORY_KIB),
    iterations=st.integers(min_value=1, max_value=Argon2idParams.MAX_ITERATIONS),
    parallelism=st.integers(min_value=1, max_value=64),
    salt=st.binary(min_size=8, max_size=64),
    output_len=st.integers(min_value=16, max_value=1024),
)
def test_encoding_round_trip(
    memory: int, iterations: int, parallelism: int, salt: bytes, output_len: int
) -> None:
    iterations = min(iterations, Argon2idParams.MAX_WORK_KIB // memory)
    params = Argon2idParams(memory, iterations, parallelism, salt, output_len)
    assert Argon2idParams.from_bytes(params.to_bytes()) == params
    assert len(params.to_bytes()) == 15 + len(salt)
