"""The vault node process: the I/O shell around the `hsm` core.

`backupvault.node.token` is the node's PKCS#11 edge (sealing node secrets under a
non-extractable token key); `backupvault.node.softhsm` sets up SoftHSM2 tokens for
development and tests.
"""
