"""The threshold client flows against a fake fleet (tests/client/fake_fleet.py): what the
client checks, names and reports. The process tests run the same flows on real nodes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.racing import before_first

from backupvault.client import pending as pending_module
from backupvault.client import threshold as threshold_module
from backupvault.client.errors import (
    AlreadyRegistered,
    Destroyed,
    EntryChanged,
    FleetUnavailable,
    NotRegistered,
    VaultError,
    WrongPassword,
)
from backupvault.client.pending import PendingFileDamaged, PendingStore
from backupvault.client.threshold import EVALUATE_RESENDS, ThresholdVault, version_spent
from backupvault.crypto import oprf
from backupvault.crypto.manifest import Manifest
from backupvault.crypto.seal import open_share
from backupvault.errors import InvalidInput
from backupvault.protocol import EntryStatus, ErrorCode, EvaluateRequest, ManifestResponse, Op

from .fake_fleet import FAST_KSF, FLEET_ID, LIMIT, FakeFleet, _error

RK = bytes(range(32))
RK2 = bytes(range(32, 64))


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet(5)


def test_register_then_recover_and_every_node_gets_the_reset(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    done = vault.register("correct horse", RK, ksf=FAST_KSF)
    assert (done.version, done.acknowledged, done.degraded) == (1, (0, 1, 2, 3, 4), False)
    recovered = vault.recover("correct horse", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert recovered.wrong_guesses_before == 0
    assert recovered.rejected == () and recovered.reset_missing == ()
    assert [node.resets for node in fleet.nodes] == [1] * 5
    assert vault.status().guesses_remaining == LIMIT


def test_wrong_passwords_count_down_and_a_success_reports_them(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    for left in (LIMIT - 1, LIMIT - 2):
        with pytest.raises(WrongPassword) as caught:
            vault.recover("wrong", ksf_floor=FAST_KSF)
        assert caught.value.guesses_remaining == left
    assert vault.status().guesses_remaining == LIMIT - 2
    recovered = vault.recover("right", ksf_floor=FAST_KSF)
    assert recovered.wrong_guesses_before == 2
    assert vault.status().guesses_remaining == LIMIT


def test_a_password_too_long_for_the_oprf_is_refused_before_it_costs_a_guess(
    fleet: FakeFleet,
) -> None:
    vault = fleet.vault()
    vault.register("correct horse", RK, ksf=FAST_KSF)
    too_long = "y" * (oprf.MAX_INPUT_LEN + 1)
    with pytest.raises(InvalidInput, match="at most"):
        vault.recover(too_long, ksf_floor=FAST_KSF)
    assert fleet.evaluations == 0
    assert vault.status().guesses_remaining == LIMIT
    with pytest.raises(InvalidInput, match="at most"):
        FakeFleet(5).vault().register(too_long, RK, ksf=FAST_KSF)


def test_the_last_wrong_guess_destroys_the_entry(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=FAST_KSF)
    with pytest.raises(Destroyed):
        vault.recover("wrong", ksf_floor=FAST_KSF)
    evaluations = fleet.evaluations
    with pytest.raises(Destroyed):
        vault.recover("right", ksf_floor=FAST_KSF)
    assert fleet.evaluations == evaluations  # the right password gets no evaluation either
    assert vault.status().status == EntryStatus.DESTROYED


class _Declined(Exception):
    pass


def _decline(after_a_try: bool) -> None:
    raise _Declined(after_a_try)


def test_the_last_guess_is_sent_only_once_the_caller_lets_it_go(fleet: FakeFleet) -> None:
    """One guess left: `before_last_guess` is asked before anything is sent for
    evaluation, and when it refuses no node evaluates and no guess is used (the CLI asks
    the user there). With more left, it is not asked."""
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    asked: list[int] = []
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=FAST_KSF, before_last_guess=lambda _: asked.append(1))
    assert asked == []
    evaluations = fleet.evaluations
    with pytest.raises(_Declined):
        vault.recover("wrong", ksf_floor=FAST_KSF, before_last_guess=_decline)
    assert fleet.evaluations == evaluations
    assert [n.count for n in fleet.nodes] == [LIMIT - 1] * 5
    assert vault.status().guesses_remaining == 1
    recovered = vault.recover(
        "right", ksf_floor=FAST_KSF, before_last_guess=lambda _: asked.append(1)
    )
    assert recovered.root_key == RK and asked == [1]


def test_a_try_made_again_that_finds_one_guess_left_asks_before_sending(
    fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two guesses left: the first try asks nothing; another device's wrong password is
    counted meanwhile and overtakes it, so the try made again finds one left. It asked
    nothing and sent it, destroying the key (review s42-B, B1). It now asks, saying an
    earlier try was sent."""
    monkeypatch.setattr(threshold_module, "RETRY_BACKOFF_SECONDS", 0.001)
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    for node in fleet.nodes:
        node.count = LIMIT - 2
    answer = fleet._answer
    overtaken: list[int] = []

    def another_device_first(node: Any, op: Any, request: Any) -> Any:
        if isinstance(request, EvaluateRequest) and len(overtaken) < 5:
            overtaken.append(node.index)
            node.count += 1  # another device's attempt, counted first here
            if node.index >= 2:
                return _error(ErrorCode.STALE_ATTEMPT, "older than the latest attempt")
        return answer(node, op, request)

    monkeypatch.setattr(fleet, "_answer", another_device_first)
    with pytest.raises(_Declined) as declined:
        vault.recover("wrong", ksf_floor=FAST_KSF, before_last_guess=_decline)
    assert declined.value.args == (True,)  # an earlier try was sent
    assert vault.status().status == EntryStatus.LIVE


def test_one_low_count_among_too_few_answers_asks_before_the_guess(fleet: FakeFleet) -> None:
    """With fewer than 2t - 1 answers one node's "1 left" is the t-th largest: it may be
    a hostile node's word, or an honest node's whose higher-counting peers the relay hid
    (`test_a_relay_alone_cannot_have_the_last_guess_sent_without_asking`). The safer
    reading asks: a needless question costs a confirmation, a missing one the key. With
    every node answering, one node's "1 left" is outvoted and nothing is asked."""
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    fleet.nodes[0].claims_left = 1
    assert vault.recover("right", ksf_floor=FAST_KSF, before_last_guess=_decline).root_key == RK
    fleet.nodes[3].mode = fleet.nodes[4].mode = "down"
    with pytest.raises(_Declined):
        vault.recover("right", ksf_floor=FAST_KSF, before_last_guess=_decline)


def test_one_node_down_registration_is_degraded_and_names_it_recovery_works(
    fleet: FakeFleet,
) -> None:
    fleet.nodes[3].mode = "down"
    vault = fleet.vault()
    done = vault.register("pw", RK, ksf=FAST_KSF)
    assert done.degraded and done.acknowledged == (0, 1, 2, 4)
    [missing] = done.missing
    assert missing.startswith("node 3:")
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_two_nodes_down_recovery_still_works_and_names_them_in_status(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[0].mode = fleet.nodes[4].mode = "down"
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert [m.split(":")[0] for m in recovered.reset_missing] == ["node 0", "node 4"]
    status = vault.status()
    assert status.agreeing == (1, 2, 3)
    assert [o.split(":")[0] for o in status.other] == ["node 0", "node 4"]


def test_below_t_nodes_registration_fails_naming_the_nodes(fleet: FakeFleet) -> None:
    for i in (1, 2, 3):
        fleet.nodes[i].mode = "down"
    with pytest.raises(FleetUnavailable) as caught:
        fleet.vault().register("pw", RK, ksf=FAST_KSF)
    message = caught.value.message
    # No majority: no node commits M, so none stores or acknowledges its share.
    assert "only 0 of 5" in message and "3 are needed" in message
    assert all(f"node {i}" in message for i in (1, 2, 3))


def test_below_t_nodes_recovery_fails_naming_the_nodes_and_costs_no_more(
    fleet: FakeFleet,
) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    for i in (0, 1, 2):
        fleet.nodes[i].mode = "down"
    with pytest.raises(FleetUnavailable) as caught:
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert all(f"node {i}" in caught.value.message for i in (0, 1, 2))


def test_a_node_with_a_wrong_partial_is_named_and_recovery_succeeds(fleet: FakeFleet) -> None:
    fleet.nodes[2].mode = "bad_partial"
    notes: list[str] = []
    vault = fleet.vault(notes)
    vault.register("pw", RK, ksf=FAST_KSF)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert recovered.rejected == (2,)
    assert any("vault node 2 sent" in note for note in notes)


def test_three_wrong_partials_fail_and_name_every_one(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    for i in (0, 2, 4):
        fleet.nodes[i].mode = "bad_partial"
    with pytest.raises(VaultError, match="nodes 0, 2, 4 sent a partial"):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_a_partial_for_another_nodes_index_is_refused_and_named(fleet: FakeFleet) -> None:
    fleet.nodes[1].mode = "wrong_index"
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[3].mode = "down"
    fleet.nodes[4].mode = "down"
    with pytest.raises(FleetUnavailable, match="node 1: answered for another node's share"):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_a_forged_acknowledgement_does_not_count(fleet: FakeFleet) -> None:
    fleet.nodes[4].mode = "bad_ack"
    done = fleet.vault().register("pw", RK, ksf=FAST_KSF)
    assert done.acknowledged == (0, 1, 2, 3)
    assert done.missing == ("node 4: its acknowledgement's signature does not verify",)


def test_registering_twice_is_refused(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    with pytest.raises(AlreadyRegistered):
        vault.register("pw2", os.urandom(32), ksf=FAST_KSF)
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_a_registration_another_device_committed_first_is_refused_as_already_registered(
    fleet: FakeFleet,
) -> None:
    """Two devices register the same entry: both stage their shares, the other commits
    first, and every node refuses this one's commit. The agreed manifest is the other's,
    so the key is there and this registration never will be: "already registered", not a
    fleet that could not be told (simulation seed 10335034 with one hostile node)."""
    other = fleet.vault()
    # The other's registration lands between our two phases.
    raced = before_first(
        fleet, Op.COMMIT_SHARES, lambda: other.register("theirs", bytes(32), ksf=FAST_KSF)
    )
    with pytest.raises(AlreadyRegistered, match="another device"):
        fleet.vault().register("mine", RK, ksf=FAST_KSF)
    assert raced
    assert other.recover("theirs", ksf_floor=FAST_KSF).root_key == bytes(32)


def test_fewer_than_t_liars_cannot_make_a_registrations_version_look_spent() -> None:
    """Invariant 11: a registration is told its version was taken (and never takes
    effect) only on t answers holding that version or a later one with another manifest,
    so t - 1 hostile nodes saying so, beside honest nodes still at the version before or
    holding M itself, change nothing (t = 3 of 5)."""
    mine = b"M"
    liars = [(1, b"another M"), (2, b"")]
    honest = [(0, b""), (1, mine), (0, b"")]
    assert not version_spent(liars + honest, mine, 1, 3)
    assert version_spent([*liars, (1, b""), *honest[1:]], mine, 1, 3)  # one honest: deleted


def _erase_during_evaluate(
    fleet: FakeFleet, erased: range, deleted: bool, relay_gone_after: bool = False
) -> None:
    """Before the first evaluate reaches the nodes, the nodes in `erased` lose their share
    (taken away by another device's delete as they accept it, `deleted`; or lost).
    `relay_gone_after`: the relay answers nothing after that evaluate."""

    def erase() -> None:
        for index in erased:
            fleet.nodes[index].share, fleet.nodes[index].manifest = None, b""
        if deleted:
            fleet.replicated = b""

    def gone(request: httpx.Request) -> None:
        raise httpx.ConnectError("connection refused", request=request)

    before_first(fleet, Op.EVALUATE, erase, gone if relay_gone_after else None)


def test_a_recovery_racing_another_devices_delete_says_the_key_changed(fleet: FakeFleet) -> None:
    """Between the manifest read and the evaluation another device deletes the key: three
    nodes have erased their share, two have not yet taken the delete and answer. Two
    partials are too few, and the manifests, read again (no guess), show the entry empty:
    the key changed, where it said the fleet was unavailable (sim seeds 10363041 and
    10363059, two hostile nodes of five)."""
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    _erase_during_evaluate(fleet, range(3), deleted=True)
    with pytest.raises(EntryChanged, match="no longer holds version 1"):
        fleet.vault().recover("pw", ksf_floor=FAST_KSF)


def test_a_recovery_racing_a_delete_seen_as_stale_by_two_nodes_says_the_key_changed(
    fleet: FakeFleet,
) -> None:
    """The same race where the nodes that took the delete answer `stale_manifest` (the
    value they hold is deleted) and are too few for the majority rule, a third node's
    partial does not verify, and the delete reaches that node before the manifests are
    read again (sim seed 10377367, two hostile nodes of five)."""
    fleet.vault().register("pw", RK, ksf=FAST_KSF)

    def delete_on_two() -> None:
        for index in (0, 1):
            fleet.nodes[index].share, fleet.nodes[index].mode = None, "deleted"
        fleet.nodes[2].mode = "bad_partial"
        fleet.replicated = b""

    def delete_reaches_node_2(request: httpx.Request) -> None:
        if request.url.path.endswith(str(Op.MANIFEST)):
            fleet.nodes[2].share, fleet.nodes[2].manifest = None, b""

    before_first(fleet, Op.EVALUATE, delete_on_two, delete_reaches_node_2)
    with pytest.raises(EntryChanged, match="no longer holds version 1"):
        fleet.vault().recover("pw", ksf_floor=FAST_KSF)


def test_a_failed_read_after_a_recovery_short_of_partials_keeps_the_recovery_s_error(
    fleet: FakeFleet,
) -> None:
    """The manifests read again cannot be had (the relay is gone): the evaluation's own
    error stands, saying what it says of the guess, not the read's "nothing was sent"."""
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    _erase_during_evaluate(fleet, range(3), deleted=True, relay_gone_after=True)
    with pytest.raises(FleetUnavailable, match="need 3 partial evaluations, 2 nodes gave one"):
        fleet.vault().recover("pw", ksf_floor=FAST_KSF)


def test_shares_lost_under_a_live_key_stay_unavailable(fleet: FakeFleet) -> None:
    """The control: the same three nodes answer holding no share, but the key was not
    deleted (the manifests still agree on it): too few partials, said as such."""
    fleet.vault().register("pw", RK, ksf=FAST_KSF)
    _erase_during_evaluate(fleet, range(3), deleted=False)
    with pytest.raises(FleetUnavailable, match="need 3 partial evaluations, 2 nodes gave one"):
        fleet.vault().recover("pw", ksf_floor=FAST_KSF)


def _change_raced_at_its_commit(fleet: FakeFleet, other_device: Callable[[], object]) -> None:
    """A password change whose commit `other_device` beats; raises what the change says."""
    mine = fleet.vault()
    mine.register("old", RK, ksf=FAST_KSF)
    recovered = mine.recover("old", ksf_floor=FAST_KSF)
    handle = fleet.handle
    before_first(fleet, Op.COMMIT_SHARES, other_device)
    try:
        mine.change_password(recovered, "mine", ksf=FAST_KSF)
    finally:
        fleet.handle = handle  # type: ignore[method-assign]


def test_a_password_change_another_device_committed_first_is_refused_as_changed(
    fleet: FakeFleet,
) -> None:
    """The same race for a password change: the other device's new manifest is in
    effect, so this change is refused as the key having changed, with its password."""
    other = fleet.vault()
    with pytest.raises(EntryChanged):
        _change_raced_at_its_commit(
            fleet,
            lambda: other.change_password(
                other.recover("old", ksf_floor=FAST_KSF), "theirs", ksf=FAST_KSF
            ),
        )
    assert other.recover("theirs", ksf_floor=FAST_KSF).root_key == RK


def test_a_password_change_raced_by_another_devices_delete_is_refused_as_changed(
    fleet: FakeFleet,
) -> None:
    """Another device deletes the key while this change's commit is on its way: the
    change never takes effect, and the old password opens nothing either. It said "the
    old password still opens the key" (sim seeds 10610087, 10610234)."""
    other = fleet.vault()
    with pytest.raises(EntryChanged):
        _change_raced_at_its_commit(
            fleet, lambda: other.delete(other.recover("old", ksf_floor=FAST_KSF))
        )
    with pytest.raises(NotRegistered):
        other.recover("old", ksf_floor=FAST_KSF)


def test_a_delete_of_a_key_destroyed_meanwhile_says_destroyed(fleet: FakeFleet) -> None:
    """Wrong guesses on another device destroyed the key after this one recovered it:
    the delete says so, not that the fleet is unavailable (sim seed 10610144)."""
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    for node in fleet.nodes:
        node.destroyed, node.share = True, None  # each erased its share on its count
    with pytest.raises(Destroyed):
        vault.delete(recovered)


def test_a_delete_of_a_key_destroyed_and_registered_again_says_the_key_changed(
    fleet: FakeFleet,
) -> None:
    """Wrong guesses on another device destroyed the key after this one recovered it, and
    that device registered a new one: the nodes answer "not registered" for this delete's
    version and the entry is live again. It said the fleet was unavailable (sim seed
    10408977, one hostile node of five); the manifests now show another key."""
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    for node in fleet.nodes:  # destroyed, then a new key registered: none of this one's
        node.share, node.manifest = None, b""
    fleet.replicated = b""
    other = fleet.vault()
    other.register("theirs", RK2, ksf=FAST_KSF)
    with pytest.raises(EntryChanged, match="no longer holds version 1"):
        vault.delete(recovered)
    assert other.recover("theirs", ksf_floor=FAST_KSF).root_key == RK2  # nothing erased


def test_change_password_then_only_the_new_one_opens(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    recovered = vault.recover("old", ksf_floor=FAST_KSF)
    changed = vault.change_password(recovered, "new", ksf=FAST_KSF)
    assert (changed.version, changed.degraded) == (2, False)
    assert vault.recover("new", ksf_floor=FAST_KSF).root_key == RK
    with pytest.raises(WrongPassword):
        vault.recover("old", ksf_floor=FAST_KSF)


def test_delete_erases_every_share(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    version, pending = vault.delete(vault.recover("pw", ksf_floor=FAST_KSF))
    assert (version, pending) == (1, ())
    assert all(node.share is None for node in fleet.nodes)
    with pytest.raises(NotRegistered):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_a_weaker_stretching_than_the_client_allows_is_refused(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    stronger = FAST_KSF.__class__(
        memory_kib=FAST_KSF.memory_kib * 2,
        iterations=1,
        parallelism=1,
        salt=FAST_KSF.salt,
        output_len=64,
    )
    evaluations = fleet.evaluations
    with pytest.raises(VaultError, match="weaker password stretching"):
        vault.recover("pw", ksf_floor=stronger)
    assert fleet.evaluations == evaluations  # refused before anything was evaluated


@pytest.mark.parametrize(
    ("weaker", "what"),
    [
        # As much memory in all, but in 32 lanes of 8 KiB: each core of a guessing rig
        # needs 1/32 of the memory the floor asks one lane to hold.
        ({"parallelism": 32}, "per lane"),
        ({"output_len": 16}, "output"),
        ({"iterations": 1, "memory_kib": FAST_KSF.memory_kib // 2}, "memory"),
    ],
)
def test_stretching_weaker_in_any_field_than_the_floor_is_refused_before_a_guess(
    fleet: FakeFleet, weaker: dict[str, int], what: str
) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=dataclasses.replace(FAST_KSF, **weaker))
    evaluations = fleet.evaluations
    with pytest.raises(VaultError, match=f"weaker password stretching.*{what}"):
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert fleet.evaluations == evaluations


def test_more_lanes_with_the_memory_to_match_meet_the_floor(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    wider = dataclasses.replace(FAST_KSF, parallelism=4, memory_kib=FAST_KSF.memory_kib * 4)
    vault.register("pw", RK, ksf=wider)
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_a_node_that_missed_a_delivery_gets_it_on_the_resend(fleet: FakeFleet) -> None:
    """A node cut off by the relay (too slow) is sent the same shares again, and the nodes
    that already hold theirs acknowledge the same delivery a second time."""
    fleet.nodes[1].mode = "down_once"
    done = fleet.vault().register("pw", RK, ksf=FAST_KSF)
    assert (done.acknowledged, done.missing) == ((0, 1, 2, 3, 4), ())
    assert fleet.nodes[0].seen.count("register-share") == 2


def test_a_lying_node_cannot_push_the_next_version_out_of_reach(fleet: FakeFleet) -> None:
    """A deleted entry's next registration takes the version t nodes report, not the
    highest any node claims."""
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    vault.delete(vault.recover("pw", ksf_floor=FAST_KSF))
    fleet.nodes[0].version = 999
    before = fleet.nodes[1].seen.count("manifest")
    assert vault.status().version == 1
    # "Empty" of two versions is read twice more (a node that missed the delete may be
    # brought it, docs/threshold.md), never more: the lie costs two fan-outs.
    assert fleet.nodes[1].seen.count("manifest") == before + 1 + threshold_module.EMPTY_REREADS


def test_t_destroyed_answers_beside_empty_ones_of_two_versions_are_read_once(
    fleet: FakeFleet,
) -> None:
    """Only "empty" of two versions is read again (a registration would take its version
    from it); t "destroyed" settle the read whatever the other nodes say (review s59)."""
    for node in fleet.nodes[:3]:
        node.destroyed = True
    fleet.nodes[3].version, fleet.nodes[4].version = 1, 2
    before = fleet.nodes[0].seen.count("manifest")
    assert fleet.vault().status().status == EntryStatus.DESTROYED
    assert fleet.nodes[0].seen.count("manifest") == before + 1


def test_manifests_that_do_not_reach_t_are_fetched_again(fleet: FakeFleet) -> None:
    """Nodes answer `manifest` from the value they hold, so during a change some may still
    hold the old one: two stale answers, two current ones and a silent node reach no t,
    and the client asks again rather than failing (or using either)."""
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    old = fleet.nodes[0].manifest
    vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    assert fleet.nodes[0].manifest != old
    for node in fleet.nodes[:2]:
        node.mode, node.stale_manifest = "stale_once", old
    fleet.nodes[2].mode = "down_once"
    before = fleet.nodes[3].seen.count("manifest")
    recovered = vault.recover("new", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK
    assert fleet.nodes[3].seen.count("manifest") == before + 2  # the fan-out was resent


def test_a_node_that_has_not_taken_the_tombstone_yet_is_asked_again(fleet: FakeFleet) -> None:
    """Found by the chaos soak (run Z, 26 attack guesses): just after an entry is destroyed
    a laggard may still answer with the live manifest. Two nodes destroyed, that one live
    and two silent settle nothing (neither t destroyed nor t agreeing on a manifest), so
    the client asks again and reports the destruction, not an unavailable fleet."""
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    live = fleet.nodes[0].manifest
    for _ in range(LIMIT - 1):
        with pytest.raises(WrongPassword):
            vault.recover("wrong", ksf_floor=FAST_KSF)
    with pytest.raises(Destroyed):
        vault.recover("wrong", ksf_floor=FAST_KSF)
    for node in fleet.nodes:  # every node took the tombstone, as the real fleet's do
        node.share, node.manifest, node.destroyed = None, b"", True
    fleet.nodes[2].mode, fleet.nodes[2].stale_manifest = "stale_once", live
    for node in fleet.nodes[3:]:
        node.mode = "down"
    evaluations = fleet.evaluations
    with pytest.raises(Destroyed):
        vault.recover("right", ksf_floor=FAST_KSF)
    assert fleet.nodes[0].seen.count("manifest") >= 2  # asked again
    assert fleet.evaluations == evaluations


def test_one_node_without_a_share_does_not_stop_the_resend_to_a_slow_one() -> None:
    """Found by the simulation (seed 6000097): of three nodes, one had lost its share (a
    wiped disk) and one had not accepted the attempt itself yet ("resend"); the refusal of
    the first ended the evaluate fan-outs, so the right password failed with two nodes
    able to answer. The resend goes on while t good partials can still come."""
    fleet = FakeFleet(3)
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[0].share = None  # its share is gone
    fleet.nodes[2].unavailable_for = 1
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_the_evaluation_is_resent_while_a_node_catches_up(
    fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos soak (run AA: 12 operations, each a counted guess with no
    output): with two nodes down, a third that cannot accept the attempt for a few
    fan-outs (stalled, or catching up after a restart) is waited for, up to
    EVALUATE_PATIENCE_SECONDS (and at least EVALUATE_RESENDS times), since the guess is
    already spent; then given up on."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    for node in fleet.nodes[3:]:
        node.mode = "down"
    fleet.nodes[2].unavailable_for = 5
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK and recovered.wrong_guesses_before == 0
    assert fleet.nodes[0].seen.count("evaluate") == 6  # five resends, no second charge
    # Past the patience (a fan-out that lasts longer, here none at all), still the
    # minimum resends, then given up on.
    fleet.nodes[2].unavailable_for = 10**6
    monkeypatch.setattr("backupvault.client.threshold.EVALUATE_PATIENCE_SECONDS", 0.0)
    before = fleet.nodes[0].seen.count("evaluate")
    with pytest.raises(FleetUnavailable, match="need 3 partial evaluations, 2 nodes gave one"):
        vault.recover("pw", ksf_floor=FAST_KSF)
    assert fleet.nodes[0].seen.count("evaluate") == before + 1 + EVALUATE_RESENDS


def test_an_evaluation_the_relay_got_no_answer_to_is_resent(
    fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos soak (run AF, 7 of its 12 errors): the relay answers 503 when no
    node answered before its timeout, though the nodes may have counted the attempt. The
    client resends the same B (answered again without a second charge), where it failed
    the recovery at once."""
    monkeypatch.setattr("backupvault.client.threshold.RETRY_BACKOFF_SECONDS", 0.001)
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.relay_unavailable_for = 2
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK and recovered.wrong_guesses_before == 0
    assert fleet.nodes[0].seen.count("evaluate") == 3 and len(fleet.attempts) == 1
    fleet.relay_unavailable_for = 10**6  # never any answer: given up on, named
    monkeypatch.setattr("backupvault.client.threshold.EVALUATE_PATIENCE_SECONDS", 0.0)
    with pytest.raises(FleetUnavailable, match="the relay heard from no node"):
        vault.recover("pw", ksf_floor=FAST_KSF)


def test_fewer_than_t_share_holders_in_reach_sends_no_evaluate_and_uses_no_guess(
    fleet: FakeFleet,
) -> None:
    """Found by the chaos soak (seed 417345562): an entry registered with one node down,
    then two other holders down: every recovery was counted and failed, until the entry
    was destroyed. Now the client sees from the manifest answers that only two nodes hold
    a share, sends no evaluate, and says that no guess was used. (Here the recovery runs
    on another device, which owes node 3 nothing; the registering device would deliver
    node 3's share first, the next test.)"""
    fleet.nodes[3].mode = "down"
    assert fleet.vault().register("pw", RK, ksf=FAST_KSF).degraded
    vault = fleet.vault()  # another device: no pending deliveries
    fleet.nodes[3].mode = "ok"  # back, without a share
    fleet.nodes[0].mode = fleet.nodes[1].mode = "down"
    for _ in range(2):  # each would have cost a guess, and L of them the key
        with pytest.raises(FleetUnavailable) as caught:
            vault.recover("pw", ksf_floor=FAST_KSF)
    assert "no guess was used" in (caught.value.hint or "")
    assert "node 3: holds no share" in caught.value.message
    assert all("evaluate" not in node.seen for node in fleet.nodes)
    assert fleet.attempts == {} and [n.count for n in fleet.nodes] == [0] * 5
    fleet.nodes[0].mode = fleet.nodes[1].mode = "ok"
    assert vault.recover("pw", ksf_floor=FAST_KSF).wrong_guesses_before == 0


def test_an_owed_share_is_delivered_before_the_recovery_needs_it(fleet: FakeFleet) -> None:
    """The soak's commonest failure (docs/soak.md, run X): an entry registered with node 3
    down holds shares on exactly t nodes, and two of them go down. The registering device
    keeps node 3's share sealed to node 3, so it delivers it at its next contact, before
    any evaluate and without the password; the recovery then has its t holders. It goes
    out right after the first manifest read, not after the reads that wait for the nodes
    down: another device's recovery may be waiting on that share too (sim seed 10451914)."""
    fleet.nodes[3].mode = "down"
    vault = fleet.vault()
    assert vault.register("pw", RK, ksf=FAST_KSF).degraded
    fleet.nodes[3].mode = "ok"  # back, without a share
    fleet.nodes[0].mode = fleet.nodes[1].mode = "down"
    del fleet.nodes[3].seen[:]
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.root_key == RK and recovered.pending == ()
    seen = fleet.nodes[3].seen
    assert seen[:2] == ["manifest", "deliver-share"], seen
    assert seen.index("deliver-share") < seen.index("evaluate")
    assert fleet.nodes[3].manifest == fleet.replicated
    assert all("evaluate" in fleet.nodes[i].seen for i in (2, 3, 4))


def _silent_on_reads(
    vault: ThresholdVault,
    fleet: FakeFleet,
    silent: dict[int, set[int]],
    then: Callable[[], None] = lambda: None,
) -> None:
    """The nodes `silent[k]` give no answer to the recovery's k-th manifest read (from 1);
    `then` runs right after the first."""
    read = vault._manifests
    reads: list[int] = []

    def manifests(confirm: bool = False) -> Any:
        reads.append(1)
        modes = {i: fleet.nodes[i].mode for i in silent.get(len(reads), set())}
        for i in modes:
            fleet.nodes[i].mode = "down"
        try:
            return read(confirm)
        finally:
            for i, mode in modes.items():
                fleet.nodes[i].mode = mode
            if len(reads) == 1:
                then()

    vault._manifests = manifests  # type: ignore[method-assign]


def _without_its_share(fleet: FakeFleet, slot: int) -> None:
    """Node `slot` lost its share: it answers with no manifest and holds nothing."""
    fleet.nodes[slot].share, fleet.nodes[slot].manifest = None, b""


def test_a_node_owed_its_share_that_answers_only_a_later_read_gets_it_then(
    fleet: FakeFleet,
) -> None:
    """The owed node is silent on the first manifest read and answers the next: its share
    goes out after that read, before the evaluation (review s42-A: it was tried only
    after the first, and the recovery ended with two holders)."""
    fleet.nodes[3].mode = "down"
    vault = fleet.vault()
    assert vault.register("pw", RK, ksf=FAST_KSF).degraded  # node 3's share owed
    fleet.nodes[3].mode = "ok"
    _without_its_share(fleet, 1)
    fleet.nodes[0].mode = "down"
    _silent_on_reads(vault, fleet, {1: {3}})
    del fleet.nodes[3].seen[:]
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK
    seen = fleet.nodes[3].seen
    assert "deliver-share" in seen and seen.index("deliver-share") < seen.index("evaluate")


def test_holders_seen_in_any_read_count_while_silent_nodes_are_asked_again(
    fleet: FakeFleet,
) -> None:
    """Fewer than t holders answer and some node is silent: the manifests are read again
    (a manifest read costs no guess), and a holder seen in an earlier read still counts
    when it is silent in a later one. Here no single read shows t holders."""
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    _without_its_share(fleet, 1)
    fleet.nodes[0].mode = "down"
    _silent_on_reads(vault, fleet, {1: {3}, 2: {2}, 3: {2}})  # holders {2, 4}, {3, 4}, {3, 4}
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_a_node_still_answering_the_old_manifest_is_asked_again(fleet: FakeFleet) -> None:
    """Every node answers, t agree on the new M, but fewer than t hold a share of it: a
    node still answering the old M may be about to take the new one and promote its
    staged share (a commit still on its way to it), so the manifests are read again, each
    node asked to confirm with a round. Before (sim seed 11100072, a recovery racing
    another device's password change), the client read once and said "unavailable"."""
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    old = fleet.nodes[0].manifest
    vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    _without_its_share(fleet, 0)
    _without_its_share(fleet, 1)
    fleet.nodes[2].mode, fleet.nodes[2].stale_manifest = "stale_once", old
    confirms = _confirms_asked(vault)
    assert vault.recover("new", ksf_floor=FAST_KSF).root_key == RK
    assert confirms[:2] == [False, True]


def _confirms_asked(
    vault: ThresholdVault, first: Callable[[Any], None] = lambda found: None
) -> list[bool]:
    """Records whether each of `vault`'s manifest reads asked for `confirm`; `first` may
    change what the first read found."""
    read = vault._manifests
    confirms: list[bool] = []

    def manifests(confirm: bool = False) -> Any:
        confirms.append(confirm)
        found = read(confirm)
        if len(confirms) == 1:
            first(found)
        return found

    vault._manifests = manifests  # type: ignore[method-assign]
    return confirms


@pytest.mark.parametrize("before", [0, 1], ids=["ended-this-version", "ended-the-one-before"])
def test_a_node_answering_the_end_of_a_version_is_asked_again(
    fleet: FakeFleet, before: int
) -> None:
    """Every node answers, t agree on M (version 2), fewer than t hold a share of it, and
    one answered that a version ended: this one (another device's delete committing, which
    the others will take too; sim seed 11100324), or the one before (the node has not
    taken the registration of this one yet: 11300256). The manifests are read again, with
    `confirm`, and what they say then stands; before, the client read once and said
    "unavailable". A node answering "empty" at version 0 holds nothing of the entry, and
    no round changes that: it is not waited for (`test_shares_lost_under_a_live_key_...`)."""
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "pw", ksf=FAST_KSF)
    version = Manifest.from_bytes(fleet.nodes[0].manifest).version
    assert version == 2
    _without_its_share(fleet, 1)
    _without_its_share(fleet, 2)

    def ended(found: Any) -> None:  # node 0's first answer: a version ended
        answer = ManifestResponse(EntryStatus.EMPTY, version - before, b"", LIMIT, LIMIT, False)
        found.answers[0] = dataclasses.replace(found.answers[0], response=answer)

    confirms = _confirms_asked(vault, ended)
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK
    assert confirms[:2] == [False, True]


def test_a_password_changed_elsewhere_between_the_reads_is_not_said_to_be_set_here(
    fleet: FakeFleet,
) -> None:
    """This device registered version 1 (a share still owed); another device changes the
    password between this recovery's first read and the next. Given version 1's
    password, this device must not be told it set the password now in effect: that was
    asked of the first read's manifest, not of the one evaluated (review s42-A)."""
    fleet.nodes[0].mode = "down"
    here = fleet.vault()
    assert here.register("pw1", RK, ksf=FAST_KSF).degraded  # node 0's share owed
    elsewhere = fleet.vault()

    def changed_elsewhere() -> None:
        modes = [n.mode for n in fleet.nodes]
        for n in fleet.nodes:
            n.mode = "ok"
        elsewhere.change_password(elsewhere.recover("pw1", ksf_floor=FAST_KSF), "pw2", ksf=FAST_KSF)
        for n, mode in zip(fleet.nodes, modes, strict=True):
            n.mode = mode

    _without_its_share(fleet, 1)
    _silent_on_reads(here, fleet, {1: {3}}, then=changed_elsewhere)
    with pytest.raises(WrongPassword) as raised:
        here.recover("pw1", ksf_floor=FAST_KSF)
    assert "this device set the password now in effect" not in (raised.value.hint or "")


def test_an_owed_share_is_delivered_by_status_without_the_password(fleet: FakeFleet) -> None:
    fleet.nodes[3].mode = "down"
    vault = fleet.vault()
    assert vault.register("pw", RK, ksf=FAST_KSF).degraded
    assert not vault.needs_password_to_finish()
    assert vault.status().pending == ("node 3: share of version 1 not yet confirmed",)
    fleet.nodes[3].mode = "ok"
    assert vault.status().pending == ()
    assert fleet.nodes[3].share is not None and "evaluate" not in fleet.nodes[3].seen


def test_a_pending_file_of_an_earlier_build_is_finished_after_a_recovery(
    fleet: FakeFleet, tmp_path: Path
) -> None:
    """Files written before shares were sealed to their nodes (format v1) kept every share
    under the export_key: they still load, `vault finish` asks for the password, and the
    next recovery delivers them as a register-share."""
    fleet.nodes[3].mode = "down"
    path = tmp_path / "client-pending.json"
    vault = fleet.vault([], PendingStore(path))
    assert vault.register("pw", RK, ksf=FAST_KSF).degraded
    fleet.nodes[3].mode = "ok"
    # The same record as an earlier build kept it: each share under the export_key.
    export_key = fleet.vault().recover("pw", ksf_floor=FAST_KSF).export_key
    body = json.loads(path.read_text())
    record = body["records"][0]
    digest = hashlib.sha256(bytes.fromhex(record["manifest"])).digest()
    wrap = AESGCM(pending_module._wrap_key(export_key))
    wrapped = []
    for index, sealed in enumerate(record.pop("shares")):
        share = open_share(fleet.nodes[index].hpke, FLEET_ID, index, digest, bytes.fromhex(sealed))
        aad = pending_module._aad(
            FLEET_ID, "alice", vault.entry, 1, index + 1, bytes.fromhex(record["manifest"])
        )
        nonce = os.urandom(12)
        wrapped.append((nonce + wrap.encrypt(nonce, share, aad)).hex())
    del record["sealing"]
    path.write_text(
        json.dumps({"format": pending_module.FORMAT_V1, "records": [{**record, "shares": wrapped}]})
    )
    vault = fleet.vault([], PendingStore(path))
    assert vault.needs_password_to_finish()
    assert vault.status().pending == ("node 3: share of version 1 not yet confirmed",)
    assert "deliver-share" not in fleet.nodes[3].seen and fleet.nodes[3].share is None
    assert vault.recover("pw", ksf_floor=FAST_KSF).pending == ()
    assert fleet.nodes[3].share is not None and not path.exists()


def test_a_degraded_registration_is_finished_at_the_next_recovery(fleet: FakeFleet) -> None:
    fleet.nodes[3].mode = "down"
    vault = fleet.vault()
    assert vault.register("pw", RK, ksf=FAST_KSF).missing[0].startswith("node 3:")
    assert vault.status().pending == ("node 3: share of version 1 not yet confirmed",)
    fleet.nodes[3].mode = "ok"
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)
    assert recovered.pending == ()
    assert fleet.nodes[3].share is not None and fleet.nodes[3].manifest == fleet.replicated
    assert (
        vault.status().pending == () and vault.pending.owed(FLEET_ID, "alice", vault.entry, 0) == ()
    )
    # Every node holds a share now: two others may be down.
    fleet.nodes[0].mode = fleet.nodes[1].mode = "down"
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK


def test_a_pending_share_is_never_sent_after_the_password_changed(fleet: FakeFleet) -> None:
    """Device A registered with node 3 down; device B changed the password meanwhile. A's
    share of version 1 is dropped at its next contact, not delivered."""
    fleet.nodes[3].mode = "down"
    device_a = fleet.vault()
    device_a.register("old", RK, ksf=FAST_KSF)
    fleet.nodes[3].mode = "ok"
    device_b = fleet.vault()
    device_b.change_password(device_b.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    version_2 = fleet.replicated
    seen = list(fleet.nodes[3].seen)
    assert device_a.recover("new", ksf_floor=FAST_KSF).pending == ()
    assert device_a.pending.owed(FLEET_ID, "alice", device_a.entry, 0) == ()
    assert fleet.nodes[3].manifest == version_2
    assert "register-share" not in fleet.nodes[3].seen[len(seen) :]


def test_a_password_change_with_a_node_down_is_finished_later(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("old", RK, ksf=FAST_KSF)
    fleet.nodes[2].mode = "down"
    changed = vault.change_password(vault.recover("old", ksf_floor=FAST_KSF), "new", ksf=FAST_KSF)
    assert changed.degraded
    old_share = fleet.nodes[2].share  # node 2 still holds the old password's share
    fleet.nodes[2].mode = "ok"
    assert vault.recover("new", ksf_floor=FAST_KSF).pending == ()
    assert fleet.nodes[2].share != old_share and fleet.nodes[2].version == 2


def test_pending_erasures_are_sent_again_until_every_node_confirms(fleet: FakeFleet) -> None:
    vault = fleet.vault()
    vault.register("pw", RK, ksf=FAST_KSF)
    fleet.nodes[4].mode = "down"
    _, pending = vault.delete(vault.recover("pw", ksf_floor=FAST_KSF))
    assert [p.split(":")[0] for p in pending] == ["node 4"]
    assert fleet.nodes[4].share is not None
    fleet.nodes[4].mode = "ok"
    status = vault.status()
    assert status.status == EntryStatus.EMPTY and status.pending == ()
    assert fleet.nodes[4].share is None  # erased on the owner's statement, sent again


def test_the_pending_file_survives_a_restart_and_holds_no_share_in_the_clear(
    fleet: FakeFleet, tmp_path: Path
) -> None:
    path = tmp_path / "client-pending.json"
    fleet.nodes[1].mode = "down"
    fleet.vault(pending=PendingStore(path)).register("pw", RK, ksf=FAST_KSF)
    kept = path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    fleet.nodes[1].mode = "ok"
    restarted = fleet.vault(pending=PendingStore(path))  # a new process, the same file
    assert restarted.recover("pw", ksf_floor=FAST_KSF).pending == ()
    assert not path.exists()
    share = fleet.nodes[1].share
    assert share is not None
    for node in fleet.nodes:
        assert node.share is not None
        assert node.share.to_bytes()[1:].hex().encode() not in kept


def test_a_damaged_pending_file_is_named_and_left_and_recovery_still_works(
    fleet: FakeFleet, tmp_path: Path
) -> None:
    path = tmp_path / "client-pending.json"
    path.write_text('{"format": "backupvault pending deliveries v1", "records": [{}]}')
    notes: list[str] = []
    vault = fleet.vault(notes, PendingStore(path))
    vault.register("pw", RK, ksf=FAST_KSF)
    assert vault.recover("pw", ksf_floor=FAST_KSF).root_key == RK
    assert any("pending deliveries not finished" in n and str(path) in n for n in notes)
    with pytest.raises(PendingFileDamaged) as caught:
        vault.finish(vault.live_manifest()[0])
    assert str(path) in caught.value.message and "mv " in (caught.value.hint or "")
    assert path.read_text().startswith('{"format"')  # left as it was


def test_a_registration_below_t_is_sent_again_while_nodes_are_silent(fleet: FakeFleet) -> None:
    """Found by the chaos soak: a password change whose M was committed while fewer than
    t nodes stored their share left an entry no one could recover. The shares exist only
    in this process until t nodes hold them, so the same delivery is sent again while
    nodes are silent (here three of them, for three fan-outs)."""
    vault = fleet.vault()
    vault.delivery_patience = 5.0
    for i in (1, 2, 3):
        fleet.nodes[i].down_for = 3
    done = vault.register("pw", RK, ksf=FAST_KSF)
    assert done.acknowledged == (0, 1, 2, 3, 4)
    assert fleet.nodes[0].seen.count("register-share") == 4  # the same delivery, 4 times


def test_a_node_silent_for_one_fan_out_gets_its_share_before_registration_returns(
    fleet: FakeFleet,
) -> None:
    vault = fleet.vault()
    vault.delivery_patience = 5.0
    fleet.nodes[3].down_for = 1
    assert not vault.register("pw", RK, ksf=FAST_KSF).degraded
    assert vault.pending.owed(FLEET_ID, "alice", vault.entry, 0) == ()


def test_a_node_silent_longer_is_owed_its_share_and_not_waited_for(fleet: FakeFleet) -> None:
    """With t staged, the client resends once for slow nodes, then commits: a registration
    does not wait out a stalled node (it would stall the user), it owes it the share."""
    vault = fleet.vault()
    vault.delivery_patience = 5.0
    fleet.nodes[3].down_for = 3  # both staging fan-outs and the commit
    done = vault.register("pw", RK, ksf=FAST_KSF)
    assert done.degraded and [m.split(":")[0] for m in done.missing] == ["node 3"]
    (owed,) = vault.pending.owed(FLEET_ID, "alice", vault.entry, 0)
    assert owed.nodes == (3,)
    recovered = vault.recover("pw", ksf_floor=FAST_KSF)  # the next success delivers it
    assert recovered.pending == () and fleet.nodes[3].share is not None


def test_a_password_typed_in_another_unicode_form_is_the_same_password(
    fleet: FakeFleet,
) -> None:
    """ "café" with é as one code point (most keyboards) or as e + U+0301 (a paste from a
    PDF or a file name, some input methods) was two passwords: the right one, typed on
    another device, counted as a wrong guess."""
    composed, decomposed = (
        "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
        "cafe\u0301 cre\u0300me bru\u0302le\u0301e",
    )
    vault = fleet.vault()
    vault.register(decomposed, RK, ksf=FAST_KSF)
    assert vault.recover(composed, ksf_floor=FAST_KSF).root_key == RK
    recovered = vault.recover(decomposed, ksf_floor=FAST_KSF)
    vault.change_password(recovered, composed, ksf=FAST_KSF)
    assert vault.recover(decomposed, ksf_floor=FAST_KSF).wrong_guesses_before == 0


def test_no_question_when_t_nodes_say_no_guess_is_left(fleet: FakeFleet) -> None:
    """t nodes saying 0 left is a key no password opens any more (each erases its share
    at the next request): the recovery goes on and says it is destroyed, not "may have
    one guess left" (which a script was refused with, exit 2, instead of exit 4)."""
    vault = fleet.vault()
    vault.register("right", RK, ksf=FAST_KSF)
    for node in fleet.nodes:
        node.count = LIMIT
    with pytest.raises(Destroyed):
        vault.recover("right", ksf_floor=FAST_KSF, before_last_guess=_decline)
