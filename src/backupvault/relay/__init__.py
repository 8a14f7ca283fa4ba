"""The relay ("ChatD"): the fleet's front door.

It authenticates accounts (EdDSA JWTs from the operator), rate-limits them, and forwards
HPKE-sealed requests to a vault node, unchanged. It cannot read what it forwards and
never imports the node, `hsm` or any node secret. See docs/relay.md.
"""

from __future__ import annotations

from backupvault.ratelimit import RateLimiter
from backupvault.relay.app import create_app, serve
from backupvault.relay.config import RelayConfig, config_from_mapping, load_config
from backupvault.tokens import (
    TokenRejected,
    TokenVerifier,
    generate_operator_key,
    load_operator_private_key,
    load_operator_public_key,
    mint_token,
    private_key_pem,
    public_key_pem,
    save_operator_key,
)

__all__ = [
    "RateLimiter",
    "RelayConfig",
    "TokenRejected",
    "TokenVerifier",
    "config_from_mapping",
    "create_app",
    "generate_operator_key",
    "load_config",
    "load_operator_private_key",
    "load_operator_public_key",
    "mint_token",
    "private_key_pem",
    "public_key_pem",
    "save_operator_key",
    "serve",
]
