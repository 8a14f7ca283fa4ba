"""Every entry a node's disk holds, as `node inspect` shows one: counters and flags, never a
secret. `node inspect` unseals the node's keys once per entry and process; the soak checks
hundreds of entries on every node, so this reads a whole store in one go:

    python -m backupvault.chaos.nodedump --config DIR/node0.toml    # JSON list on stdout

Run it with the node's SOFTHSM2_CONF in the environment (it opens the node's token).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from backupvault.fleet.messages import payload_of
from backupvault.hsm.state import EntryId, EntryState
from backupvault.node.config import FleetDescription, NodeConfig
from backupvault.node.main import load_keys
from backupvault.node.store import NodeStore
from backupvault.protocol import EntryStatus


def dump(config_path: Path) -> list[dict[str, Any]]:
    config = NodeConfig.load(config_path)
    keys = load_keys(config, FleetDescription.load(config.fleet_file))
    store = NodeStore(config.data_dir / "store.sqlite", config.index, keys.storage)
    try:
        records = store.load()
    finally:
        store.close()
    out: list[dict[str, Any]] = []
    for record in records:
        entry_id = EntryId.from_bytes(record.key)
        payload = payload_of(record.value)
        state = EntryState.from_bytes(payload) if payload else EntryState()
        out.append(
            {
                "node": config.index,
                "account": entry_id.account,
                "entry": entry_id.entry,
                "status": EntryStatus(state.status).name.lower(),
                "attempts_used": state.attempts_used,
                "attempt_seq": state.attempt_seq,
                "success_seq": state.success_seq,
                "guess_limit": state.guess_limit,
                "generation": state.generation,
                "version": state.version,
                "holds_record": bool(state.record),
                "holds_wrapped_root_key": bool(state.wrapped_root_key),
                "accepted_round": record.accepted_round,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backupvault.chaos.nodedump")
    parser.add_argument("--config", type=Path, required=True, help="the node's node<i>.toml")
    args = parser.parse_args(argv)
    json.dump(dump(args.config), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
