"""The client SDK: the vault, trust in the fleet's keys, the threshold recovery."""

#: The vault entry that holds a user's backup root key.
DEFAULT_ENTRY = "backup-root-key"
