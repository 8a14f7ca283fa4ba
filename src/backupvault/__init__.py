"""backupvault: end-to-end encrypted backups with vault-held keys."""

__version__ = "0.1.0"
