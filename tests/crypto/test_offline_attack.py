"""Offline attack harness: what c hostile nodes hold, against a 1,000-word dictionary that
contains the right password, with the real crypto (only the KSF is made cheap).

A node holds its key share k_i and the entry's manifest M (the Feldman commitments
C_0 … C_{t−1}, the KSF parameters, the OPAQUE record with its envelope, pk_auth and the
wrapped root key); its process memory holds nothing else about the entry. The attacker
pools everything c nodes hold and runs, for every candidate password, every test the loot
allows: compute an OPRF output, then open the envelope, check pk_auth and unwrap the root
key (`manifest.open_entry` does all three).

Why two of five shares (t = 3) cannot tell the right candidate:
- Shamir hides k perfectly below t: for EVERY key k′ there is exactly one polynomial of
  degree t−1 through (0, k′) and the c < t shares plus t−1−c free points, so the shares
  are equally consistent with every key (`test_fewer_than_t_shares_fit_every_key` checks
  this for random keys). The only OPRF-key material they can interpolate is a wrong key.
- The commitments do fix k, but only as C_0 = k·G: turning that into k·H(password) for
  a candidate is a Diffie–Hellman computation (the threshold one-more-DH assumption of
  TOPPSS, Jarecki et al. 2017), which no harness can do.
- The envelope, pk_auth and the wrapped root key are all checked with the OPRF output;
  without it every candidate fails every check in the same way.
So the attacker's result is the same for all 1,000 candidates, the right one included.
The same harness given three shares interpolates k, confirms it against C_0 and finds the
password, which shows the harness itself works.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from backupvault.crypto import manifest, oprf, threshold
from backupvault.crypto.ksf import Argon2idParams
from backupvault.crypto.manifest import Manifest
from backupvault.errors import AuthenticationFailed, InvalidInput

Q = oprf.GROUP_ORDER
# Real Argon2id, with the cheapest parameters it accepts: the harness measures what can be
# told apart, not how long it takes.
CHEAP_KSF = Argon2idParams(memory_kib=8, iterations=1, parallelism=1, salt=bytes(16))
PASSWORD = b"tangerine-harbor-1987"
ROOT_KEY = bytes(range(100, 132))
DICTIONARY_SIZE = 1000


@dataclass(frozen=True)
class Loot:
    """Everything c nodes hold about one entry."""

    manifest: bytes
    shares: tuple[threshold.KeyShare, ...]


@dataclass(frozen=True)
class AttackResult:
    key_confirmed: bool  # some key built from the loot matched C_0
    outcomes: dict[bytes, str]  # candidate → what the checks said

    @property
    def accepted(self) -> list[bytes]:
        return [c for c, outcome in self.outcomes.items() if outcome == "opens"]


def _interpolate(shares: tuple[threshold.KeyShare, ...]) -> bytes:
    """f(0) as if the shares determined the polynomial (they do when there are ≥ t)."""
    weights = threshold.lagrange_coefficients([s.index for s in shares])
    value = sum(
        w * int.from_bytes(s.scalar, "little") for w, s in zip(weights, shares, strict=True)
    )
    return (value % Q).to_bytes(32, "little")


def attack(loot: Loot, candidates: list[bytes]) -> AttackResult:
    """The best offline attack the loot allows, run for real."""
    m = Manifest.from_bytes(loot.manifest)
    # Every key the shares can give: the interpolation of each subset (of size t when there
    # are enough shares, of all shares otherwise). Keep a key that matches C_0 if any.
    size = min(m.threshold, len(loot.shares))
    keys = [_interpolate(subset) for subset in itertools.combinations(loot.shares, size)]
    confirmed = [k for k in keys if oprf.scalar_mult_base(k) == m.commitments.public_key]
    key = confirmed[0] if confirmed else keys[0]  # the best guess when none confirms
    outcomes: dict[bytes, str] = {}
    for candidate in candidates:
        output = oprf.evaluate(key, candidate)
        try:
            _, root_key = manifest.open_entry(m, output)
        except AuthenticationFailed as exc:
            outcomes[candidate] = f"refused: {type(exc).__name__}: {exc.message}"
        else:
            assert root_key == ROOT_KEY
            outcomes[candidate] = "opens"
    return AttackResult(bool(confirmed), outcomes)


def _dictionary(rng: random.Random) -> list[bytes]:
    words = ["tangerine", "harbor", "falcon", "meadow", "copper", "violet", "summit", "ember"]
    candidates: set[bytes] = set()
    while len(candidates) < DICTIONARY_SIZE - 1:
        a, b = rng.sample(words, 2)
        candidate = f"{a}-{b}-{rng.randrange(1900, 2030)}".encode()
        if candidate != PASSWORD:
            candidates.add(candidate)
    ordered = sorted(candidates)
    ordered.insert(rng.randrange(len(ordered) + 1), PASSWORD)
    return ordered


@pytest.fixture(scope="module")
def registration() -> manifest.Registration:
    return manifest.register(
        PASSWORD,
        ROOT_KEY,
        fleet_id=bytes(32),
        account="alice",
        entry="backup-root-key",
        epoch=1,
        nodes=5,
        threshold_count=3,
        ksf=CHEAP_KSF,
    )


@pytest.fixture(scope="module")
def dictionary() -> list[bytes]:
    words = _dictionary(random.Random(9))
    assert len(words) == DICTIONARY_SIZE and len(set(words)) == DICTIONARY_SIZE
    assert PASSWORD in words
    return words


def _loot(registration: manifest.Registration, nodes: list[int]) -> Loot:
    shares = tuple(registration.shares[i - 1] for i in nodes)
    return Loot(registration.manifest.to_bytes(), shares)


@pytest.mark.parametrize("nodes", [[1, 2], [5, 3]], ids=lambda n: f"nodes{n}")
def test_two_of_five_cannot_tell_the_right_password(
    registration: manifest.Registration, dictionary: list[bytes], nodes: list[int]
) -> None:
    result = attack(_loot(registration, nodes), dictionary)
    assert not result.key_confirmed
    assert result.accepted == []
    # Every candidate, the right one included, gets the very same answer.
    assert len(set(result.outcomes.values())) == 1
    assert result.outcomes[PASSWORD] == result.outcomes[dictionary[0]]


@pytest.mark.parametrize("nodes", [[5, 1, 4], [1, 2, 3, 4, 5]], ids=lambda n: f"nodes{n}")
def test_three_of_five_find_it(
    registration: manifest.Registration, dictionary: list[bytes], nodes: list[int]
) -> None:
    result = attack(_loot(registration, nodes), dictionary)
    assert result.key_confirmed
    assert result.accepted == [PASSWORD]


def test_fewer_than_t_shares_fit_every_key(registration: manifest.Registration) -> None:
    # For random keys k′, the polynomial through (0, k′), node 1's and node 2's shares is
    # a valid degree-2 sharing: the two shares say nothing about which k′ is real.
    held = registration.shares[:2]
    rng = random.Random(3)
    for _ in range(20):
        other_key = rng.randrange(1, Q)
        points = [(0, other_key)] + [(s.index, int.from_bytes(s.scalar, "little")) for s in held]
        for share in held:
            assert _lagrange_at(points, share.index) == int.from_bytes(share.scalar, "little")
        # … and that sharing gives the other three nodes perfectly ordinary shares.
        for x in (3, 4, 5):
            assert 0 < _lagrange_at(points, x) < Q


def _lagrange_at(points: list[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if i != j:
                term = term * (x - xj) * pow(xi - xj, -1, Q) % Q
        total += term
    return total % Q


def test_shares_alone_do_not_open_anything(registration: manifest.Registration) -> None:
    # A share used directly as the key (what a single node could try) opens nothing.
    m = registration.manifest
    for share in registration.shares:
        with pytest.raises(AuthenticationFailed):
            manifest.open_entry(m, oprf.evaluate(share.scalar, PASSWORD))
    with pytest.raises(InvalidInput):
        attack(Loot(b"not a manifest", registration.shares[:1]), [PASSWORD])
