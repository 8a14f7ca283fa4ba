"""Reading a node's counters (`GET /v1/metrics`), which it answers only to a request
signed with a relay key it lists, for that node (docs/operations.md)."""

from __future__ import annotations

from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backupvault.codec import untrusted_json
from backupvault.errors import BackupVaultError
from backupvault.hop import metrics_headers
from backupvault.http_answers import read_answer, untrusted_client

#: The largest metrics answer read: a few dozen counters.
MAX_METRICS_BYTES = 64 * 1024


class MetricsUnavailable(BackupVaultError):
    """A node did not give its counters; the message says why."""

    exit_code = 5


def node_metrics(
    key: Ed25519PrivateKey, url: str, index: int, timeout: float = 5.0
) -> dict[str, Any]:
    """Node `index`'s counters at `url`, asked with relay key `key`'s signature."""
    try:
        with untrusted_client(timeout, trust_env=False) as http:
            answer = read_answer(
                http,
                "GET",
                f"{url.rstrip('/')}/v1/metrics",
                limit=MAX_METRICS_BYTES,
                what="the node's metrics",
                deadline=timeout,
                headers=metrics_headers(key, index),
            )
    except httpx.HTTPError as err:
        raise MetricsUnavailable(f"did not answer ({type(err).__name__}: {err})") from None
    except BackupVaultError as err:
        raise MetricsUnavailable(err.message) from None
    try:
        data = untrusted_json(answer.content, "the node's metrics")
    except BackupVaultError as err:
        data = {"detail": err.message}
    if answer.status_code == 401:
        detail = data.get("detail", "") if isinstance(data, dict) else ""
        raise MetricsUnavailable(
            f"answered 401 ({detail}): it takes only a key in fleet.toml's relay_public_keys,"
            f" signed for node {index} (its place in the config's list of nodes)"
        )
    if answer.status_code != 200 or not isinstance(data, dict):
        raise MetricsUnavailable(f"answered HTTP {answer.status_code}, not its counters")
    return data
