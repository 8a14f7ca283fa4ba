"""Bugs the simulation found; each must stay fixed.

The simulation's workload changed when its clients moved to the threshold flow, so an old
seed no longer replays the schedule that found its bug. Each regression is kept as what
still reproduces it: a scripted run of the same scenario in the same world, a unit test
beside the fixed code, or (where neither exists) the old seed, which still runs both ways.
docs/simulation.md says which is which.
"""

from __future__ import annotations

import pytest

from backupvault.crypto import owner
from backupvault.errors import AuthenticationFailed
from backupvault.protocol import EntryStatus, ErrorResponse, Op, ResetRequest
from backupvault.sim import clients
from backupvault.sim.shrink import report
from backupvault.sim.world import (
    FLEET_ID,
    SimConfig,
    Simulation,
    ThresholdClient,
    run_seed,
    threshold_world,
)

CONFIGS = pytest.mark.parametrize(
    "config", [SimConfig(leader=False), SimConfig()], ids=["leaderless", "leader"]
)


def test_regression_reset_from_before_a_re_registration_changes_nothing() -> None:
    """Seeds 127, 1119, 1392, 1481 (single-seed flow): a KE3 answering an attempt made
    against an earlier registration reset and unlocked the new one. The same scenario on
    the threshold flow: the owner's signed reset for an attempt of version 1, held back by
    the relay across a delete and a new registration, changes nothing at any node."""
    world = threshold_world(3, 3, seed=1)
    client = ThresholdClient(world)
    client.register(b"old", bytes(32))
    recovered = client.recover(b"old")
    assert recovered is not None
    old = client.agreed()
    state = world.replicated(0, client.key)
    statement = owner.OwnerStatement(
        owner.StatementKind.RESET,
        FLEET_ID,
        client.account,
        client.entry,
        old.version,
        state.attempt,
        state.reset_hash,
    )
    held_back = ResetRequest(
        client.account,
        client.entry,
        old.version,
        state.attempt,
        owner.sign_statement(recovered[0], statement),
    )
    assert client.delete(recovered[0]) == 3
    client.register(b"new", bytes([7]) * 32, version=old.version + 1)
    assert client.recover(b"wrong") is None  # an attempt of the new registration
    before = [world.replicated(slot, client.key) for slot in range(3)]
    rows = [world.honest[slot].rows[client.key] for slot in range(3)]
    for slot in range(3):
        answer = world.request(slot, Op.RESET, held_back)
        assert isinstance(answer, ErrorResponse), answer
    assert [world.replicated(slot, client.key) for slot in range(3)] == before
    assert [world.honest[slot].rows[client.key] for slot in range(3)] == rows
    assert before[0].attempts_used == 1  # the wrong guess still counts


def test_regression_tombstone_reaches_a_node_that_promised_higher() -> None:
    """Seeds 3459, 5452: a node cut off while its entry was destroyed raised its promise
    with its own failing proposal; the tombstone's repair Accept was refused and the
    refusal taken as "no longer lags", so it kept the live value. Fixed in
    fleet/replica.py (a refused repair rewrites the value above the promise)."""
    world = threshold_world(3, 2, seed=3, leader=False)
    client = ThresholdClient(world)
    client.register(b"right", bytes(32))
    world.reachable = {0, 1}  # node 2 cut off
    for _ in range(2):
        assert client.recover(b"wrong") is None
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # the third: destroyed
    assert world.replicated(0, client.key).status == EntryStatus.DESTROYED
    assert world.replicated(2, client.key).status == EntryStatus.LIVE
    # Cut off, node 2 takes a request and prepares its own (failing) round.
    assert isinstance(world.request(2, Op.RESET, _any_reset(client)), ErrorResponse)
    world.reachable = None
    world.settle(20.0)
    assert world.replicated(2, client.key).status == EntryStatus.DESTROYED


def _any_reset(client: ThresholdClient) -> ResetRequest:
    return ResetRequest(client.account, client.entry, 1, 1, bytes(64))


# Found on fresh seeds: a restarting node re-asked only peers that never answered, a late
# "not ready" answer could replace a newer "ready" one, and its asks backed off past the
# settle window. Fixed in fleet/replica.py; the deterministic tests are in
# tests/fleet/test_replica.py (test_a_late_not_ready_answer_never_replaces_a_newer_ready_one,
# test_peers_that_said_not_ready_are_asked_again). Seeds 777273 and 900502 (the observer
# counted a catch-up copy as a vote) are tests/sim/test_observer.py. The seeds below found
# fleet bugs that have no scripted scenario yet; they still run, on today's workload.


# A wiped node copied (b, v) while catching up, then a duplicate of the leader's pipelined
# Accept(b) arrived after its promise had moved to b + 1; it answered "accepted" without
# writing. Fixed in fleet/replica.py (the repeated answer writes the record again).
# A node's own acceptor refused the committed Accept after its abandoned leaderless round
# raised its promise, and only peers were repaired. Fixed in fleet/replica.py (the
# committing node repairs its own acceptor too).
@pytest.mark.parametrize("seed", [3000947, 5003786])
@CONFIGS
def test_regression_seeds_of_leader_path_bugs(seed: int, config: SimConfig) -> None:
    result = run_seed(seed, config)
    assert result.violation is None, report(result)


# Found on fresh seeds (2000 from 6,000,000), by the threshold workload: of three nodes one
# had lost its share (a rolled-back disk) and one had not accepted the attempt itself yet;
# the first one's refusal ended the SDK's evaluate resends, so the owner's right password
# failed with two able nodes. Fixed in client/threshold.py (resend while t good partials
# can still come), mirrored in sim/clients.py; the deterministic test is
# tests/client/test_threshold_client.py
# test_one_node_without_a_share_does_not_stop_the_resend_to_a_slow_one.
@pytest.mark.parametrize("seed", [6000097])
def test_regression_one_refusal_does_not_stop_the_resend(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (2000 from 9,100,000): a node whose disk was rolled back began
# catching up, crashed before it finished, and restarted with its store's counter equal
# to the token's (raised when the catch-up began): it served as intact and never fetched
# the rest (an entry left empty, a tombstone missed). Fixed in node/store.py and
# node/main.py (the store records the catch-up until a write made once caught up),
# mirrored by the simulator's disk; the deterministic test is tests/node/test_group_commit.py
# test_a_node_stopped_during_its_catch_up_catches_up_again_at_its_next_start.
@pytest.mark.parametrize("seed", [9100627, 9100640])
def test_regression_a_catch_up_cut_short_by_a_crash_is_resumed(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on the same fresh seeds: a node that missed the tombstone of the version it held
# refused the registration over it (no owner statement to check) for good, and so every
# later change or delete of that entry (9100069, 9101025: a delete of the version after).
# Fixed in hsm/shares.py `_check_transition`: taken when the new value's window starts L
# attempts or more after the held one's; the deterministic test is
# tests/hsm/test_catching_up.py
# test_a_laggard_takes_a_registration_over_a_tombstone_it_missed_and_erases_nothing.
@pytest.mark.parametrize("seed", [9101198, 9100069, 9101025])
def test_regression_a_laggard_takes_a_registration_over_a_tombstone_it_missed(
    seed: int,
) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on the next fresh seeds (2000 from 9,200,000): a node held a sibling of the
# committed last attempt (same number, later client clock) that lost its round, and
# refused the tombstone built on the committed one as "the attempt clock went down", for
# good. Fixed in hsm/shares.py `_check_transition` (a tombstone of the held version skips
# the clock); the deterministic test is tests/hsm/test_catching_up.py
# test_a_tombstone_is_taken_over_a_sibling_attempt_with_a_later_clock.
# 9500124 (of fresh seeds from 9,500,000): the same with the owner's delete, and a
# sibling one attempt further on (the counter, not only the clock, looked as if it went
# back); fixed in the same place: test_a_signed_delete_is_taken_over_a_later_sibling_attempt.
@pytest.mark.parametrize("seed", [9201842, 9500124])
def test_regression_a_tombstone_over_a_sibling_attempt_with_a_later_clock(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (9100862 and 9101607 of 2000 from 9,100,000; 9300379 of 2000 from
# 9,300,000): a node whose disk was wiped or rolled back caught up first from a peer
# holding a sibling of the chosen value (two registrations of one version; one password
# change's commit applied at two attempts; an attempt with a later clock, in 9100862,
# which no longer fails since 62c2028 hid it), then refused the chosen value from the
# next peer, checked against that copy. It had accepted the chosen value before it lost
# its disk; with the sibling's holder it made a majority that committed a value not built
# on the chosen one.
# Fixed in fleet/replica.py `_copy_taken` (a copy is checked against what this node held
# before the catch-up); the deterministic test is tests/fleet/test_replica.py
# test_a_copy_is_checked_against_what_this_node_held_not_a_peer_s_earlier_copy.
@pytest.mark.parametrize("seed", [9100862, 9101607, 9300379])
def test_regression_a_catch_up_keeps_the_chosen_value_over_a_sibling_copy(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (2000 from 9,300,000): a node held a password change's commit
# applied at an earlier attempt (a sibling that lost its round) and refused the committed
# one, which starts the new version's window later with no owner reset, as "a reset
# without the owner's signature", and every later value of that version with it (9301925:
# left two attempts behind after the heal). Fixed in hsm/shares.py `_check_transition`
# (`_bare_commit`); the deterministic test is tests/hsm/test_catching_up.py
# test_a_later_start_of_the_same_commit_is_taken_over_a_bare_sibling.
@pytest.mark.parametrize("seed", [9301925, 9300379])
def test_regression_a_later_start_of_the_same_commit_over_a_bare_sibling(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (from 9,505,000): a node held a sibling attempt of version 2 one
# further than the committed one (another request, which lost its round) and refused the
# owner's password change, built on the committed attempt, as "the attempt counter went
# down", and every later value of the entry with it (9507211: left at version 2 after the
# heal). Fixed in hsm/shares.py `_check_transition`: a later version is not compared with
# the held version's counter or clock; the deterministic tests are
# tests/hsm/test_catching_up.py test_a_password_change_is_taken_over_a_later_sibling_attempt
# and test_a_hostile_proposer_cannot_take_the_count_back_across_a_version.
@pytest.mark.parametrize("seed", [9507211])
def test_regression_a_password_change_over_a_later_sibling_attempt(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on the same fresh seeds: four devices registered version 1 at once; two nodes of
# five accepted a registration's commit that lost its round and refused the chosen one as
# "the manifest changed without the owner's signature", then every later value (9507654:
# the owner's delete, signed over the chosen M, left them behind a tombstone). Fixed in
# hsm/shares.py `_check_transition`: over a commit with nothing since, another M of the
# same version is taken on its t acknowledgements (and a share of another M evaluates
# nothing); the deterministic tests are tests/hsm/test_catching_up.py
# test_the_chosen_registration_is_taken_over_a_bare_sibling_registration and
# test_a_hostile_proposer_swapping_the_registration_gets_no_evaluation_of_the_old_share.
@pytest.mark.parametrize("seed", [9507654])
def test_regression_the_chosen_registration_over_a_bare_sibling(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (10,000 from 9,700,000): node 1 of 3, cut off while version 1
# was guessed to its tombstone, registered again as version 2 and deleted by its owner,
# refused the delete for good after the heal, as "a delete of a version this node never
# held" (signed with version 2's pk_auth; nothing in it retires version 1). Fixed in
# hsm/shares.py `_check_transition`: a later value holding no key (a tombstone or a
# delete) is taken without a statement and acts on nothing; the deterministic tests are
# tests/hsm/test_catching_up.py
# test_a_laggard_takes_the_delete_of_a_version_it_never_held_and_erases_nothing and
# test_a_hostile_proposer_deleting_a_later_version_gains_nothing.
@pytest.mark.parametrize("seed", [9709511])
def test_regression_a_laggard_takes_the_delete_of_a_version_it_never_held(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (10,000 from 10,000,000): node 1 of 3, the leader, accepted the
# owner's password change (version 2) alone, at its pipelined ballot; the owner's delete
# of version 1, built on the same live value, was chosen by nodes 0 and 2 at a higher
# ballot and committed again about 50 times; node 1 refused it every time as "the version
# went down" and stayed at version 2 (10007660). Fixed in hsm/shares.py
# `_check_transition`: over a commit with nothing since, a key-less value of the version
# before is taken and acts on nothing; the deterministic tests are
# tests/hsm/test_catching_up.py
# test_the_chosen_delete_is_taken_over_a_bare_password_change_it_raced,
# test_a_hostile_proposer_taking_a_password_change_back_gains_nothing and, for the share the
# node keeps of the lost commit (`_orphaned`),
# test_a_hostile_proposer_cannot_stop_the_owner_registering_after_a_password_change.
@pytest.mark.parametrize("seed", [10007660])
def test_regression_the_chosen_delete_over_a_bare_password_change(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (10,000 from 10,040,000): a node at L erased its share and proposed
# the tombstone while the owner's reset for that L-th attempt was on its way; the reset won
# and the node refused every later value as "an entry brought back to life" (10043566,
# 10045090). A node held the owner's delete built on a later attempt than the delete
# chosen and refused it as "the attempt counter went down" (10046249). Fixed in
# hsm/shares.py `_check_transition` (`_outlived_tombstone`, and no counters compared
# between values that hold no key); the deterministic tests are in
# tests/hsm/test_tombstone_and_copies.py. Found later (10,000 from 10,150,000): the
# owner's success was inside the tombstone's window, not at its last attempt, and two of
# five nodes held the tombstone for good (10159529); `_outlived_tombstone` now takes any
# signed reset after the tombstone's own.
@pytest.mark.parametrize("seed", [10043566, 10045090, 10046249, 10159529])
def test_regression_a_value_that_lost_to_the_owners_success_or_delete_gives_way(
    seed: int,
) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (10,000 from 10,110,000): node 1, leading its own client's
# recovery, applied the owner's password change over a guess (attempt 9) that was never
# committed, and accepted it alone; the change applied at attempt 8 was chosen by nodes 0
# and 2, and node 1 refused it 57 times as "the attempt counter went down" (10112960).
# Fixed in hsm/shares.py `_check_transition` (now `_over_a_bare_commit`); the
# deterministic tests are tests/hsm/test_catching_up.py
# test_an_earlier_start_of_the_same_commit_is_taken_over_a_bare_sibling and
# test_a_hostile_proposer_moving_a_bare_commits_window_start_gains_nothing.
@pytest.mark.parametrize("seed", [10112960])
def test_regression_an_earlier_start_of_the_same_commit_over_a_bare_sibling(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Found on fresh seeds (10,000 from 10,050,000): client c2 changed the password between
# c0's manifest read and its evaluation; every node refused c0's attempt as
# `stale_manifest`, and c0 reported the fleet unavailable after the faults had ended
# (10051237). Fixed in the clients: too few nodes left at the version read is "the key
# changed" (the SDK's `EntryChanged`), not "unavailable"; the deterministic test is
# tests/hsm/test_threshold_client_on_real_nodes.py
# test_a_password_changed_on_another_device_mid_recovery_is_named_and_costs_no_guess.
# The same for a password change's staging (10,000 from 10,195,000, after the proposer's
# Accept began to leave before its own write, which moved the schedule): c0 deleted the
# key after c2 recovered it to change it, every node refused c2's new shares as
# `stale_manifest`, and c2 reported "unavailable (0 staged)" (10196044); the
# deterministic test is test_a_key_deleted_on_another_device_mid_password_change_is_named.
# And a delete's (10,000 from 10,235,000): c3 changed the password after c1 recovered the
# key to delete it; every node refused c1's statement as `stale_manifest`, and c1
# reported "unavailable (0 erasures)" (10241660);
# test_a_delete_after_a_password_change_on_another_device_is_named.
# And a recovery's over a delete (5,000 from 10,285,000): c2 deleted the key between c1's
# manifest read and its evaluation; every node answered c1 `not_registered` (an empty
# entry), and c1 reported "unavailable (0 partials)" (10289583). Fixed in the firmware:
# an evaluation naming a version deleted since is `stale_manifest`;
# test_a_key_deleted_on_another_device_mid_recovery_is_named.
# Seed 10330086 (2,000 from 10,330,000, after the hostile-peer fixes of review s31):
# node1 led, and the commit of one evaluation began the next change queued on the entry
# in the same step; its own acceptor took that value at once, the result came before
# that write, and node1 evaluated an attempt it had not yet durably accepted
# ("evaluate-only-after-own-acceptance"). The result now comes after the write;
# tests/fleet/test_replica.py
# test_a_result_comes_after_the_write_of_the_next_change_begun_in_its_step.
def test_regression_a_result_waits_for_the_next_change_s_own_write() -> None:
    result = run_seed(10330086)
    assert result.violation is None, report(result)


# Seed 10440080 (1,000 from 10,440,000, session 40): node2 crashed before an attempt
# committed and restarted intact; node0, the committer repairing it, crashed a moment
# before node2 came back, node1 (its stand-in) had crashed too, and the two other
# acceptors, third and fourth in line, left the repair to them: node2 kept the attempt
# before ("disks-agree"). Every acceptor now stands in, one after the other;
# tests/sim/test_settling.py
# test_a_value_whose_two_lowest_acceptors_crashed_reaches_a_node_back_intact.
def test_regression_every_acceptor_stands_in_for_a_crashed_repairer() -> None:
    result = run_seed(10440080)
    assert result.violation is None, report(result)


@pytest.mark.parametrize("seed", [10051237, 10196044, 10241660, 10289583])
def test_regression_a_password_changed_on_another_device_is_an_answer(seed: int) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


def _cut_off_while(world: Simulation, cut_off: set[int]) -> None:
    world.reachable = set(range(world.plan.nodes)) - cut_off


def test_regression_a_laggard_catches_up_after_a_delete_and_a_re_registration() -> None:
    """Seed 6000566: nodes 3 and 4 were cut off while the owner deleted version 1 and
    registered version 2. Healed, their acceptors refused every version-2 value (live v1
    to live v2 with no CHANGE statement), each refusal started a no-op repair round (the
    fleet committed the same value ~15 times a second, ~7,000 messages in 30 s here), and
    the tombstone never reached them. Fixed: the registration keeps the owner's signed
    DELETE of version 1, which they verify with their own pk_auth, erasing their share
    (hsm/shares.py); a refusal by an acceptor's check is final for that value
    (fleet/replica.py)."""
    world = threshold_world(5, 2, seed=6)
    client = ThresholdClient(world)
    client.register(b"old", bytes(32))
    _cut_off_while(world, {3, 4})
    recovered = client.recover(b"old")
    assert recovered is not None
    assert client.delete(recovered[0]) == 3
    assert client.register(b"new", bytes([7]) * 32, version=2)[1] == 3
    world.reachable = None
    sent = world.stats["messages"]
    world.settle(30.0)
    assert world.stats["messages"] - sent < 1000
    for slot in (3, 4):
        assert world.replicated(slot, client.key) == world.replicated(0, client.key)
        assert not world.honest[slot].rows[client.key].share  # version 1's, erased
    for _ in range(2):
        assert client.recover(b"wrong") is None
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # destroyed
    world.settle(5.0)
    for slot in range(5):
        assert world.replicated(slot, client.key).status == EntryStatus.DESTROYED


def test_regression_a_laggard_that_missed_two_changes_catches_up_without_a_storm() -> None:
    """A node that missed two password changes cannot check the second one's statement;
    it used to refuse the value and stay behind for good (soak run T). It now takes the
    live version on its t acknowledgements (docs/threshold.md, "A chain of missed
    changes"): after the heal every node holds version 3, with no storm of rounds, and
    the majority serves."""
    world = threshold_world(5, 4, seed=7)
    client = ThresholdClient(world)
    client.register(b"one", bytes(32))
    _cut_off_while(world, {3, 4})
    for old, new in ((b"one", b"two"), (b"two", b"three")):
        recovered = client.recover(old)
        assert recovered is not None
        assert client.change_password(recovered[0], new, bytes(32))[1] == 3
    world.reachable = None
    sent = world.stats["messages"]
    world.settle(30.0)
    assert world.stats["messages"] - sent < 1000
    assert all(not n.replica or not n.replica.lagging() for n in world.honest.values())
    assert [world.replicated(slot, client.key).version for slot in range(5)] == [3, 3, 3, 3, 3]
    recovered = client.recover(b"three")
    assert recovered is not None


def test_regression_a_laggard_at_its_limit_takes_the_delete_of_the_registration_after() -> None:
    """Seed 9709511, scripted: node 1 of 3 evaluates both attempts of version 1 (its
    count at L = 2) and is cut off; the entry is destroyed at the next request, registered
    again as version 2 over the tombstone and deleted by its owner. Healed, node 1 used to
    refuse the delete for good (it never held version 2's M, the only key that checks the
    owner's statement), and kept version 1 live. It now holds the delete, as the others
    do, with no storm, and its version-1 row as it was (nothing in the delete retires it)."""
    world = threshold_world(3, 2, seed=9)
    client = ThresholdClient(world)
    client.register(b"old", bytes(32))
    for _ in range(2):
        assert client.recover(b"wrong") is None
    row = world.honest[1].rows[client.key]
    assert (row.version, row.count) == (1, 2)
    _cut_off_while(world, {1})
    with pytest.raises(AuthenticationFailed):
        client.recover(b"wrong")  # destroyed
    assert client.register(b"new", bytes([7]) * 32, version=2)[1] == 2
    recovered = client.recover(b"new")
    assert recovered is not None
    assert client.delete(recovered[0]) == 2
    deleted = world.replicated(0, client.key)
    assert (deleted.status, deleted.version) == (EntryStatus.EMPTY, 2)
    assert world.replicated(1, client.key).version == 1
    world.reachable = None
    sent = world.stats["messages"]
    world.settle(30.0)
    assert world.stats["messages"] - sent < 1000
    assert [world.replicated(slot, client.key) for slot in range(3)] == [deleted] * 3
    assert world.honest[1].rows[client.key] == row
    assert all(not n.replica or not n.replica.lagging() for n in world.honest.values())


# The hostile seeds below, up to session 48's, run with `walks=False`: the plans they had
# before hostile nodes walked rounds up (session 49), which move every later event. Every
# hostile seed here runs with `strips=False`, the plans before hostile nodes cleared the
# owner's reset (session 56).


# Found on fresh seeds (300 from 10,335,000 with one hostile node of five): two clients
# registered the same destroyed entry again at once; the second one's commit was refused
# by every node, and it ended "unavailable" though t nodes agreed on the other's
# manifest. Fixed in client/threshold.py (`_commit_shares` reads the manifests: another M
# of this version in effect is "already registered" or "entry changed"), mirrored in
# sim/clients.py; the deterministic tests are tests/client/test_threshold_client.py
# test_a_registration_another_device_committed_first_is_refused_as_already_registered and
# test_a_password_change_another_device_committed_first_is_refused_as_changed.
@pytest.mark.parametrize("seed", [10335034, 10335079])
def test_regression_a_registration_that_lost_the_race_is_already_registered(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (600 from 10,337,000 with one hostile node of five): a registration
# committed on the HELD acknowledgements of nodes 0 and 3 and of the hostile node 4; node 1
# took M without its share and node 2 was wiped, so the owner's recoveries found two honest
# holders and stayed unavailable. The SDK keeps the shares owed to nodes 1 and 2 and
# delivers them at its next contact; the sim's clients now do the same (`clients.finish`,
# docs/simulation.md "Clients"). The scripted test is
# test_simulation.py test_a_share_owed_at_registration_is_delivered_before_the_recovery.
@pytest.mark.parametrize("seed", [10337494])
def test_regression_shares_owed_at_registration_are_delivered_late(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


def test_a_delete_another_device_committed_first_is_deleted() -> None:
    """Two devices delete the same version at once: the nodes refuse the second statement
    (no key stored), and the SDK, finding the entry empty, says it is deleted; the sim's
    client said "unavailable" (seed 10610206 with one hostile node of five)."""
    world = threshold_world(5, 10)
    first, second = ThresholdClient(world), ThresholdClient(world)
    first.register(b"pw", bytes(32))
    recovered = first.recover(b"pw")
    assert recovered is not None
    read_before = second._recovered(recovered[0])  # the second device recovered too
    assert first.delete(recovered[0], counter=5) == 5
    flow = clients.delete(second.ctx, read_before, counter=6)
    assert second._run(flow).text == "deleted"


# Found on fresh seeds (300 from 10,610,000 with one hostile node of five), once hostile
# runs ran the owner's deletes at all: two devices deleted the same version at once.
@pytest.mark.parametrize("seed", [10610206])
def test_regression_a_delete_that_lost_the_race_is_deleted(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


def test_a_password_change_raced_by_a_delete_is_entry_changed() -> None:
    """As the SDK: another device deleted the key while this change's commit was on its
    way, so the change never takes effect ("entry changed", not "unavailable": seeds
    10610087, 10610234 with one hostile node of five)."""
    world = threshold_world(5, 10)
    mine, other = ThresholdClient(world), ThresholdClient(world)
    mine.register(b"pw", bytes(32))
    recovered = mine.recover(b"pw")
    assert recovered is not None
    read_before = mine._recovered(recovered[0], bytes(32))
    flow = clients.change_password(mine.ctx, read_before, b"new", counter=7)
    call = next(flow)
    while call.op is not Op.COMMIT_SHARES:
        call = flow.send(world.fanout_now(call))
    assert other.delete(recovered[0], counter=8) == 5  # lands first
    try:
        while True:
            call = flow.send(world.fanout_now(call))
    except StopIteration as stop:
        assert stop.value.text == "entry changed"


@pytest.mark.parametrize("seed", [10610087, 10610234])
def test_regression_a_password_change_that_lost_to_a_delete_is_entry_changed(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on the same fresh seeds: wrong guesses on another device destroyed the key after
# this one recovered it, and its delete said "unavailable (0 erasures)"; the SDK said the
# fleet was unavailable too. Both now say destroyed; the deterministic test is
# tests/client/test_threshold_client.py
# test_a_delete_of_a_key_destroyed_meanwhile_says_destroyed.
@pytest.mark.parametrize("seed", [10610144])
def test_regression_a_delete_of_a_destroyed_key_is_destroyed(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (300 from 10,347,000 with one hostile node of five): a wipe and a
# rollback left two honest share holders beside the hostile node, and the liveness rule
# expected recoveries with t - c honest holders. The attacker's nodes answer a client with
# silence, so a recovery combines t honest partials or none: the sim now expects one only
# when t honest nodes can evaluate, and counts the rest in `no_shares`. Since session 51
# (the catch-up asks every peer again after a quarantine of 40 s) only 10347180 of those
# 300 still loses shares; the three found first now run clean (below).
@pytest.mark.parametrize("seed", [10347180])
def test_regression_two_honest_holders_beside_a_silent_hostile_node_are_not_enough(
    seed: int,
) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)
    assert result.stats["no_shares"] > 0  # the lost shares were seen, not avoided


@pytest.mark.parametrize("seed", [10347011, 10347048, 10347164])
def test_regression_the_first_seeds_of_two_honest_holders_run_clean(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds with one hostile node of five (300 from 10,347,000; 10610194 and
# 10610217 from 10,610,000, open since session 33): two devices' recoveries of one entry
# met (the hostile node's silence makes every manifest read wait out the fan-out's
# grace, so their evaluates leave together); the nodes refused the one counted first as
# stale. The sim's clients never made such an attempt again, and the SDK did not when the
# liar's partial was rejected or a node without a share kept the stale refusals below
# N - t + 1. Both now try again when the stale refusals are what kept t partials from
# coming (`client.threshold.superseded`); the deterministic tests are
# tests/hsm/test_client_reads_node_answers.py
# test_a_recovery_overtaken_while_a_node_lies_is_made_again and
# test_a_recovery_overtaken_after_some_partials_is_made_again (a later change to the
# clients may move a seed's schedule off the race; those tests keep it).
@pytest.mark.parametrize("seed", [10347053, 10347203, 10347251, 10347256, 10610194, 10610217])
def test_regression_an_overtaken_recovery_is_made_again_beside_a_hostile_node(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds with one hostile node of five (10342295 from 10,342,000; 10347067
# and 10347194 from 10,347,000): a client's queued password changes, about 10 s each
# beside the silent hostile node, outlasted the 40 s of quiet, and the run called it
# still busy though every change completed. The checker's rule, not the fleet: the run
# now goes on while no busy client's operation is older than OP_DEADLINE; the scripted
# tests are tests/sim/test_quiet_period.py.
@pytest.mark.parametrize("seed", [10342295, 10347067, 10347194])
def test_regression_a_long_queue_beside_a_silent_hostile_node_is_not_stuck(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (300 from 10,342,000 with one hostile node of five, after the
# overtaken-attempt retry changed that run's schedule): a recovery read the manifests
# while another device's registration was being committed; two nodes answered holding a
# share (one had not yet promoted its staged share, another not yet taken M), the hostile
# node was silent, and the sim's client gave up at once where the SDK's `_live` reads
# again. The sim now does; the scripted tests are tests/sim/test_manifest_reread.py.
@pytest.mark.parametrize("seed", [10342053])
def test_regression_fewer_than_t_holders_with_a_node_silent_reads_again(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (1,000 from 10,356,000 with one hostile node of five): a node took
# one device's delete through other nodes' rounds, staged another device's registration of
# the next version, and then erased that staged share with the deleted one when its own
# copy of the delete came; on every honest node, so the registration committed with no
# share anywhere. The scripted test is tests/hsm/test_stage_then_commit.py
# test_a_registration_staged_after_the_delete_was_taken_survives_the_delete_request.
@pytest.mark.parametrize("seed", [10356181])
def test_regression_a_late_delete_request_keeps_a_later_staged_share(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (150 from 10,363,000 with two hostile nodes of five), each a client
# ending "unavailable" where the fleet had answered what happened: 10363016, two devices
# registered one entry at once, and the other's registration committed and was deleted
# before this one's commit was refused (no manifest agreed, every node holding version 1
# spent); 10363041 and 10363059, a recovery (of a password change, of a recovery) racing
# another device's delete, with the nodes that had taken the delete answering "no share";
# 10377367 (1,000 from 10,377,000), the same race answered `stale_manifest` by one node.
# The SDK (`version_spent`, `_moved_since`) and the sim's clients now say the entry
# changed; the scripted tests are tests/hsm/test_stage_then_commit.py
# test_a_registration_whose_version_another_device_registered_and_deleted_says_so and
# tests/client/test_threshold_client.py
# test_a_recovery_racing_another_devices_delete_says_the_key_changed.
@pytest.mark.parametrize("seed", [10363016, 10363041, 10363059, 10377367])
def test_regression_an_entry_changed_under_a_flow_is_told_as_changed(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=2, walks=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (1,000 from 10,408,000, one hostile node of five, session 39): a
# delete whose key another device's wrong guesses destroyed and whose owner then
# registered a new one; the nodes answered "not registered" for its version, and the
# delete ended "unavailable". The SDK (`ThresholdVault.delete`, through `_moved_since`)
# and the sim's clients now say the entry changed; the scripted test is
# tests/client/test_threshold_client.py
# test_a_delete_of_a_key_destroyed_and_registered_again_says_the_key_changed.
@pytest.mark.parametrize("seed", [10408977])
def test_regression_a_delete_of_a_key_replaced_meanwhile_is_told_as_changed(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Seed 10432010 (1,000 from 10,432,000 with two hostile nodes of five, session 40): an
# evaluation got one partial, two that did not verify (the hostile nodes), one node's
# `stale_attempt` and no answer yet from the fifth; the partials could no longer reach t,
# so the client stopped asking and said "unavailable (1 partials)", though the fifth,
# asked again, refused the attempt as stale too: it had been overtaken by another
# device's, and made again it opens the key. The client now asks the silent nodes again
# while their answers could make the attempt overtaken (`undecided`, client/threshold.py);
# tests/hsm/test_client_reads_node_answers.py
# test_a_recovery_overtaken_is_made_again_once_a_slow_node_says_so_too.
def test_regression_an_attempt_is_given_up_only_once_it_cannot_have_been_overtaken() -> None:
    result = run_seed(10432010, SimConfig(nodes=5, hostile=2, walks=False))
    assert result.violation is None, report(result)


# Seeds 10371036 (session 37) and 10451914 (session 41), one hostile node of five: two
# devices registered one entry at once, and a node that staged both shares kept the
# losing one's (it cannot tell a commit that lost from a hostile swap: docs/simulation.md
# "Known limits"), so the winner's key had t - 1 honest holders until its device delivered
# the share it owed. That device delivered only after the reads that wait for silent
# nodes, and another device's recovery, made meanwhile, ended "2 share holders". Shares
# owed now go out right after the first read (client/threshold.py `_deliver_owed_first`,
# mirrored in sim/clients.py); tests/sim/test_owed_deliveries.py
# test_a_share_owed_goes_out_after_the_first_read_not_after_the_reads_that_wait.
@pytest.mark.parametrize("seed", [10371036, 10451914])
def test_regression_a_share_owed_after_a_registration_race_goes_out_at_once(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, walks=False, strips=False))
    assert result.violation is None, report(result)


# Seeds 10574059 and 10574076 (session 49), one hostile node of five walking an entry's
# rounds up 300 steps at two honest nodes: the one of them whose floor stood lowest
# refused the chosen value's repair as too far above its rounds, which the repair took for
# its check's final word, and it held an old version for good (`disks-agree`). A repair
# now keeps such a node pending while the promise it reports rises (`_Repair.below`): the
# Accept's each resend climbs it (`Replica._reach`); seeds 10580211 and 10580296 failed
# the same way when the climb (then rungs sent by the repair) was capped at 8 resends.
@pytest.mark.parametrize("seed", [10574059, 10574076, 10580211, 10580296])
def test_regression_a_node_left_behind_by_a_walk_is_repaired(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, strips=False))
    assert result.violation is None, report(result)


# Seeds 10580507, 10586150, 10586427 and 10586532 (session 49, open until session 50),
# one hostile node of five walking rounds: the nodes it left behind were climbed by rungs,
# Prepares a step apart that each had to arrive after the one below; the simulator gives
# each message its own delay, a few of 256 were taken a round, and an entry stayed out of
# reach (`liveness`) or a node kept a destroyed key live (`tombstone-everywhere`). A climb
# is now one message's effect at the acceptor, whatever the order (`Replica._reach`).
@pytest.mark.parametrize("seed", [10580507, 10586150, 10586427, 10586532])
def test_regression_a_climb_does_not_depend_on_the_order_messages_arrive_in(seed: int) -> None:
    result = run_seed(seed, SimConfig(nodes=5, hostile=1, strips=False))
    assert result.violation is None, report(result)


# Seed 10588257 (session 49's fresh seeds, open until session 50; default options):
# node 1's own expiry round (a share left at L one grace) built the tombstone over the
# live value with its L attempts used, and node 1's own acceptor took it at 43.1, erasing
# the share; its messages were lost, and node 2's no-op round took the live value again at
# 43.2. The expiry's retry, built on that value (node 2's promise), read the erased row,
# changed nothing, and committed the live value at 45.1 without node 1, whose check refused
# it ("brought back to life") and every repair and round after it: node 1 held the
# tombstone, nodes 0 and 2 the live value (`disks-agree`). The retry now proposes the
# tombstone again (`ShareKeeper._expire`); tests/hsm/test_share_left_at_limit.py
# test_an_expiry_whose_own_tombstone_lost_its_round_proposes_the_tombstone_again.
@pytest.mark.parametrize("seed", [10588257])
def test_regression_an_expiry_s_own_tombstone_is_proposed_again_after_its_round_lost(
    seed: int,
) -> None:
    result = run_seed(seed)
    assert result.violation is None, report(result)


# Seed 10756088 (10,000 from 10,750,000, session 54): the delete was chosen through the
# leader (node1) while node2 held a higher promise of node0's; node0 crashed. Since the
# leader repairs what its Accepts missed (session 54), it took its own lift of the entry
# 8 s before for a reason to give node2 up at its first refusal, where the forwarding
# node's repair had lifted it once: node2 kept the entry live ("disks-agree"). A lift is
# now a round of the lifting node's own, and the leader lifts a refusing node once;
# tests/fleet/test_ballot_owner.py
# test_a_node_that_promised_higher_is_lifted_once_after_a_leader_s_change.
def test_regression_a_leader_s_repair_lifts_a_node_that_promised_higher() -> None:
    result = run_seed(10756088)
    assert result.violation is None, report(result)


# Seed 10821178 (300 from 10,821,000 with two hostile nodes of five, session 55): two
# devices of one entry recovered at once after the faults; with the hostile nodes' votes
# node 0 counted attempt 6 for one device's B and nodes 1 and 2 for the other's (each
# node counts its own). Node 0 refused the second as "answered for another B", which the
# client took as final: t - 1 good partials, "unavailable". That answer is now
# `stale_attempt` (the attempt was overtaken at that node), and the attempt is made again
# under a new number; tests/hsm/test_threshold_node.py
# test_a_second_b_for_an_answered_attempt_is_refused.
def test_regression_an_attempt_another_b_took_at_one_node_is_made_again() -> None:
    result = run_seed(10821178, SimConfig(nodes=5, hostile=2, strips=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (1,000 from 7,200,000 with one hostile node of five, calm network)
# by `available-during-faults`: node 1 came back intact holding the live value of an
# entry deleted while it was down, node 0 went down 14 ms later, and with the hostile
# node silent a client's read saw two "empty" and one live, and said "unavailable".
# Fixed in hsm/shares.py (a read with `confirm` runs a round first), client/threshold.py
# and sim/clients.py (resends ask for it); the deterministic tests are
# tests/hsm/test_confirming_reads.py.
def test_regression_a_node_back_from_a_restart_confirms_what_it_missed() -> None:
    config = SimConfig(nodes=5, hostile=1, network_faults=False)
    result = run_seed(7200073, config)
    assert result.violation is None, report(result)


# Found on fresh seeds (500 from 11,100,000 and from 11,300,000, calm network) by
# `available-during-faults`: a recovery read while another device's password change
# (11100072), delete (11100324, three nodes) or registration (11300256, three nodes) was
# committing; every node answered, t agreed on M, fewer than t held a share of it, and
# the client read no more and said "unavailable". Fixed in client/threshold.py and
# sim/clients.py (read again while a node answers another live manifest, or the end of a
# version but 0); the deterministic tests are tests/client/test_threshold_client.py
# test_a_node_still_answering_the_old_manifest_is_asked_again and
# test_a_node_answering_the_end_of_a_version_is_asked_again.
@pytest.mark.parametrize(
    ("seed", "nodes"),
    [(11100072, 0), (11100324, 3), (11300256, 3)],
    ids=["password-change", "delete", "registration"],
)
def test_regression_a_read_during_another_devices_commit_is_made_again(
    seed: int, nodes: int
) -> None:
    result = run_seed(seed, SimConfig(nodes=nodes, network_faults=False))
    assert result.violation is None, report(result)


# Found on fresh seeds (500 from 11,610,000, default plans) by `available-during-faults`:
# a recovery racing another device's password change. Node 1 had taken version 3's share
# and answered its M, but its own value was still version 2 (it had not accepted the
# commit), and its evaluate joined that older chosen value (`Replica._joined`): "the
# entry is at version 2", taken as a refusal; the client said "unavailable" with one
# partial while two nodes could serve. Fixed in hsm/shares.py (`_behind_own_share`: such
# a node says "send again"); the deterministic tests are
# tests/hsm/test_value_behind_own_share.py.
def test_regression_a_node_behind_its_own_share_is_asked_again() -> None:
    result = run_seed(11610198)
    assert result.violation is None, report(result)


# Found on fresh seeds (1,000 from 11,821,000, `--hostile 1 --nodes 5`) in session 60,
# failing on session 59's code too: a delete after the heal resent its evaluation three
# times (the simulator's TRIES) and gave up with two partials while the third was on its
# way, where the SDK resends while its patience lasts (EVALUATE_PATIENCE_SECONDS). The
# simulator's clients now resend as the SDK does.
def test_regression_an_evaluation_is_resent_while_its_patience_lasts() -> None:
    result = run_seed(11821457, SimConfig(nodes=5, hostile=1))
    assert result.violation is None, report(result)
