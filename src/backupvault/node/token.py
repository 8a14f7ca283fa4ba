"""The node's PKCS#11 edge: node secrets are sealed by a non-extractable key in a token.

Invariant 6 of the design: a node secret (OPRF seed, OPAQUE server key, fleet HPKE key,
node identity key, storage key) exists outside node memory only sealed by a key that
never leaves the node's PKCS#11 token. This module is that seal.

* `TokenConfig` says which token: the PKCS#11 module (shared library) path, the token
  label and the user PIN. For SoftHSM2 (development) it may also carry the path of the
  `softhsm2.conf` that locates the token store (see `backupvault.node.softhsm`).
* `TokenSealer` opens one logged-in session on that token. `ensure_sealing_key()` finds,
  or the first time generates inside the token, an AES-256 secret key labelled
  `SEALING_KEY_LABEL` with CKA_TOKEN (persistent), CKA_PRIVATE, CKA_SENSITIVE and
  not CKA_EXTRACTABLE, usable for encrypt/decrypt only. `seal()` and `unseal()` run
  AES-GCM (CKM_AES_GCM) inside the token under that key.
* `SealedFile` keeps one sealed secret in a file, written atomically, with the secret's
  name bound into the AES-GCM associated data.

Why AES-GCM in the token rather than AES key wrapping of a per-blob data key: SoftHSM2
(2.6) and python-pkcs11 (CK_GCM_PARAMS) both support CKM_AES_GCM, and every production
HSM we target does too. With GCM the token authenticates the blob and the caller's AAD
itself, so there is no second key, no second primitive and nothing key-like outside the
token even transiently. Key wrapping (CKM_AES_KEY_WRAP_PAD) would add a host-side AEAD
and a data key in host memory for no gain in what the token protects.

Sealed blob layout (version 1), `29 + len(plaintext)` bytes:

    offset  length  content
    0       1       version, 0x01
    1       12      IV: fresh random bytes for this seal (from the OS CSPRNG)
    13      n       AES-256-GCM ciphertext of the plaintext (n = len(plaintext))
    13 + n  16      AES-GCM tag (128 bits)

The GCM associated data is the version byte followed by the caller's `aad`, so neither
can be changed without the tag failing. Random 96-bit IVs keep the IV-collision chance
negligible for far more seals than a node ever makes (NIST SP 800-38D allows 2**32 per
key); a node seals a handful of secrets per provisioning.

No PIN or secret is ever put into a log line, an exception message or a repr.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from backupvault.errors import AuthenticationFailed, BackupVaultError, InvalidInput
from backupvault.files import replace_durably

__all__ = [
    "BLOB_OVERHEAD",
    "BLOB_VERSION",
    "COUNTER_SLOTS",
    "IV_LEN",
    "MAX_PLAINTEXT_LEN",
    "SEALING_KEY_LABEL",
    "SECRET_AAD_PREFIX",
    "SOFTHSM2_CONF_ENV",
    "STORE_COUNTER_APPLICATION",
    "TAG_LEN",
    "RowKeyRing",
    "SealedFile",
    "TokenConfig",
    "TokenError",
    "TokenSealer",
    "check_token_label",
]

SOFTHSM2_CONF_ENV: Final = "SOFTHSM2_CONF"
"""SoftHSM2 reads this environment variable when the module is initialized (C_Initialize)."""

SEALING_KEY_LABEL: Final = "backupvault node sealing key v1"
"""CKA_LABEL of the token's sealing key. Fixed: a node finds its key again by this label."""

STORE_COUNTER_APPLICATION: Final = "backupvault node store counter v2"
"""CKA_APPLICATION of the store counter's data objects (their CKA_LABEL holds the value)."""

COUNTER_SLOTS: Final = 2
"""Data objects the store counter alternates between, so a torn rewrite loses one step."""

_MAX_COUNTER_DIGITS: Final = 20  # 2**64 - 1 has 20 decimal digits

SEALING_KEY_ID: Final = b"backupvault-seal-v1"
"""CKA_ID set on a newly generated sealing key (informational; lookups use the label)."""

BLOB_VERSION: Final = 1
IV_LEN: Final = 12
TAG_LEN: Final = 16
_HEADER_LEN: Final = 1 + IV_LEN
BLOB_OVERHEAD: Final = _HEADER_LEN + TAG_LEN
"""A sealed blob is exactly this many bytes longer than its plaintext."""

MAX_PLAINTEXT_LEN: Final = 1 << 20
"""Node secrets are a few hundred bytes; anything above 1 MiB is refused."""

SECRET_AAD_PREFIX: Final = b"backupvault node secret: "
"""`SealedFile` seals under AAD = SECRET_AAD_PREFIX || name (UTF-8)."""

_MAX_LABEL_BYTES: Final = 32  # CK_TOKEN_INFO.label is 32 bytes, blank padded
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_MODULE_HINT: Final = (
    "check the PKCS#11 module path: it must be the token vendor's PKCS#11 shared library "
    "(SoftHSM2 on Debian: /usr/lib/softhsm/libsofthsm2.so from the package softhsm2)"
)


class TokenError(BackupVaultError):
    """The PKCS#11 token could not be used: module, token label, PIN or device problem."""


class RowKeyMoved(TokenError):
    """A reader beside the running node asked for a row key generation the node has
    rotated past since (`RowKeyRing.read`): copy the store again and ask for its own."""


@dataclass(frozen=True)
class TokenConfig:
    """Which PKCS#11 token seals this node's secrets.

    `pin` is the token's user PIN; it never appears in `repr()` or in error messages.
    `softhsm2_conf`, for SoftHSM2 only, is the `softhsm2.conf` whose `directories.tokendir`
    holds the token; `TokenSealer` puts it into `SOFTHSM2_CONF` before the module is
    initialized. Leave it `None` for a real HSM.
    """

    module_path: Path
    token_label: str
    pin: str = field(repr=False)
    softhsm2_conf: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "module_path", Path(self.module_path))
        if self.softhsm2_conf is not None:
            object.__setattr__(self, "softhsm2_conf", Path(self.softhsm2_conf))
        if not str(self.module_path):
            raise InvalidInput("the PKCS#11 module path is empty", hint=_MODULE_HINT)
        check_token_label(self.token_label)
        if not isinstance(self.pin, str) or not self.pin:
            raise InvalidInput(
                "the PKCS#11 token PIN is empty", hint="configure the token's user PIN"
            )


def check_token_label(label: str) -> None:
    """Refuse a label PKCS#11 cannot hold: empty, over 32 UTF-8 bytes, or blank-edged
    (tokens pad labels with blanks, so edge blanks would not survive a round trip)."""
    if not isinstance(label, str) or not label:
        raise InvalidInput("the PKCS#11 token label is empty")
    if len(label.encode("utf-8")) > _MAX_LABEL_BYTES:
        raise InvalidInput(f"the PKCS#11 token label {label!r} is longer than 32 bytes")
    if label != label.strip():
        raise InvalidInput(
            f"the PKCS#11 token label {label!r} starts or ends with whitespace",
            hint="token labels are blank padded; use a label without edge blanks",
        )


# ---- module loading ----------------------------------------------------------------------
# python-pkcs11 keeps one loaded library per path for the whole process, and PKCS#11 itself
# is per process: C_Initialize happens once, login state is shared by every session of the
# process on a token, and SoftHSM2 reads SOFTHSM2_CONF and scans its token directory only at
# C_Initialize. So the loading state is process-wide and guarded by one lock:
# * `_conf_at_init[path]`: SOFTHSM2_CONF in effect at the module's last C_Initialize;
# * `_open_tokens[path]`: the tokens (by serial) a live TokenSealer holds a session on.
# While no sealer of a module is open we may re-run C_Finalize/C_Initialize, which picks up
# a new SOFTHSM2_CONF or a token created after the module was loaded. While one is open we
# must not (its session would die), so a conflicting request fails with a TokenError.

_loader_lock = threading.RLock()
_conf_at_init: dict[str, str | None] = {}
_open_tokens: dict[str, set[bytes]] = {}


def _load_module(config: TokenConfig) -> Any:
    path = str(config.module_path)
    wanted = None if config.softhsm2_conf is None else str(config.softhsm2_conf)
    if not config.module_path.is_file():
        raise TokenError(f"PKCS#11 module {path} does not exist", hint=_MODULE_HINT)
    if path not in _conf_at_init:
        if wanted is not None:
            os.environ[SOFTHSM2_CONF_ENV] = wanted
        lib = _call_module(path)
        _conf_at_init[path] = os.environ.get(SOFTHSM2_CONF_ENV)
        return lib
    lib = _call_module(path)
    if wanted is None:
        return lib
    if _conf_at_init[path] != wanted and _open_tokens.get(path):
        raise TokenError(
            f"PKCS#11 module {path} is already in use in this process with "
            f"{SOFTHSM2_CONF_ENV}={_conf_at_init[path]}, not {wanted}",
            hint="SoftHSM2 reads one configuration per process: run each node in its "
            "own process, or create the tokens of one process in one directory",
        )
    # Set it even when it is already in effect: a later C_Initialize (see _find_token)
    # must read this configuration, whatever else changed the environment meanwhile.
    os.environ[SOFTHSM2_CONF_ENV] = wanted
    if _conf_at_init[path] != wanted:
        _reinitialize(lib, path)
    return lib


def _call_module(path: str) -> Any:
    try:
        return pkcs11.lib(path)
    except p11.PKCS11Error as err:
        raise TokenError(f"cannot load PKCS#11 module {path}: {err}", hint=_MODULE_HINT) from err


def _reinitialize(lib: Any, path: str) -> None:
    try:
        lib.reinitialize()
    except p11.PKCS11Error as err:
        raise TokenError(f"cannot reinitialize PKCS#11 module {path}: {err!r}") from err
    _conf_at_init[path] = os.environ.get(SOFTHSM2_CONF_ENV)


def _find_token(lib: Any, config: TokenConfig) -> Any:
    path = str(config.module_path)
    label = config.token_label
    for attempt in range(2):
        try:
            return lib.get_token(token_label=label)
        except p11.NoSuchToken:
            if attempt == 0 and not _open_tokens.get(path):
                # The token may have been created after this process initialized the module.
                _reinitialize(lib, path)
                continue
            break
        except p11.MultipleTokensReturned as err:
            raise TokenError(
                f"more than one PKCS#11 token is labelled {label!r} in module {path}",
                hint="token labels must be unique; relabel or remove the extra token",
            ) from err
        except p11.PKCS11Error as err:
            raise TokenError(f"cannot list the tokens of PKCS#11 module {path}: {err!r}") from err
    try:
        found = sorted(t.label for t in lib.get_tokens())
    except p11.PKCS11Error:
        found = []
    conf = os.environ.get(SOFTHSM2_CONF_ENV)
    where = f" ({SOFTHSM2_CONF_ENV}={conf})" if conf else ""
    raise TokenError(
        f"no PKCS#11 token labelled {label!r} in module {path}{where}; "
        f"tokens found: {', '.join(repr(f) for f in found) or 'none'}",
        hint="check the token label; for SoftHSM2 also check that SOFTHSM2_CONF names the "
        "softhsm2.conf whose token directory holds the token (softhsm2-util --show-slots)",
    )


def _login(token: Any, config: TokenConfig) -> Any:
    label = config.token_label
    try:
        return token.open(rw=True, user_pin=config.pin)
    except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange) as err:
        raise TokenError(
            f"login to PKCS#11 token {label!r} failed: the PIN is wrong",
            hint="check the configured user PIN (it is never shown); repeated wrong PINs "
            "lock the token",
        ) from err
    except p11.PinLocked as err:
        raise TokenError(
            f"the user PIN of PKCS#11 token {label!r} is locked",
            hint="the token's security officer must reset the user PIN",
        ) from err
    except p11.PinExpired as err:
        raise TokenError(
            f"the user PIN of PKCS#11 token {label!r} has expired",
            hint="set a new user PIN with the token's admin tool",
        ) from err
    except p11.PKCS11Error as err:
        raise TokenError(
            f"cannot open a session on PKCS#11 token {label!r}: {err!r}",
            hint="check that the token is present and not in use by a stuck process",
        ) from err


# ---- the sealer ------------------------------------------------------------------------------

_REQUIRED_KEY_ATTRIBUTES: Final[tuple[tuple[Attribute, object, str], ...]] = (
    (Attribute.KEY_TYPE, KeyType.AES, "an AES key"),
    (Attribute.VALUE_LEN, 32, "256 bits long"),
    (Attribute.TOKEN, True, "a token (persistent) object"),
    (Attribute.PRIVATE, True, "private (usable only after login)"),
    (Attribute.SENSITIVE, True, "sensitive"),
    (Attribute.EXTRACTABLE, False, "not extractable"),
    (Attribute.ALWAYS_SENSITIVE, True, "sensitive since it was made"),
    (Attribute.NEVER_EXTRACTABLE, True, "never extractable since it was made"),
    (Attribute.LOCAL, True, "generated inside the token (not imported)"),
    (Attribute.ENCRYPT, True, "allowed to encrypt"),
    (Attribute.DECRYPT, True, "allowed to decrypt"),
    (Attribute.WRAP, False, "not allowed to wrap keys"),
    (Attribute.UNWRAP, False, "not allowed to unwrap keys"),
    (Attribute.DERIVE, False, "not allowed to derive keys"),
    (Attribute.SIGN, False, "not allowed to MAC"),
    (Attribute.VERIFY, False, "not allowed to verify MACs"),
)

# Errors a token reports when GCM decryption fails: PKCS#11 says CKR_ENCRYPTED_DATA_INVALID,
# SoftHSM2 2.6 returns CKR_GENERAL_ERROR, others CKR_FUNCTION_FAILED. These codes can also
# mean a device fault, so after one of them the sealer checks that the token still answers
# before it blames the blob (see `TokenSealer.unseal`).
_DECRYPT_FAILURES: Final = (
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.GeneralError,
    p11.FunctionFailed,
)


class TokenSealer:
    """A logged-in session on the node's token, sealing and unsealing node secrets.

    Open it once per process per token (a second sealer on the same token is refused:
    PKCS#11 login state is per process, so it could not check its own PIN) and close it
    on shutdown; it is also a context manager. Calls are serialized by a lock, so one
    sealer may be shared by threads.
    """

    def __init__(self, config: TokenConfig) -> None:
        self._config = config
        self._path = str(config.module_path)
        self._lock = threading.Lock()
        self._key: Any = None
        self._session: Any = None
        self._slots: list[tuple[int, Any]] | None = None
        with _loader_lock:
            lib = _load_module(config)
            token = _find_token(lib, config)
            serial: bytes = token.serial
            held = _open_tokens.setdefault(self._path, set())
            if serial in held:
                raise TokenError(
                    f"PKCS#11 token {config.token_label!r} is already open in this process",
                    hint="open one TokenSealer per token and share it",
                )
            self._session = _login(token, config)
            held.add(serial)
            self._serial = serial

    @property
    def token_label(self) -> str:
        return self._config.token_label

    @property
    def token_serial(self) -> str:
        """The token's serial number (not a secret), for logs and diagnostics."""
        return self._serial.decode("ascii", "replace")

    def __repr__(self) -> str:
        state = "closed" if self._session is None else "open"
        return f"<TokenSealer token={self.token_label!r} serial={self.token_serial!r} {state}>"

    def __enter__(self) -> TokenSealer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the session (logging out when it is the process's last one). Idempotent."""
        with _loader_lock, self._lock:
            session, self._session, self._key = self._session, None, None
            self._slots = None
            if session is None:
                return
            _open_tokens.get(self._path, set()).discard(self._serial)
            with contextlib.suppress(p11.PKCS11Error):
                session.close()

    # ---- the store counter ---------------------------------------------------------------

    def store_counter(self) -> int | None:
        """The node store's counter as the token last recorded it (None: never recorded).

        Kept in `COUNTER_SLOTS` private data objects (CKA_APPLICATION
        `STORE_COUNTER_APPLICATION`, the value in CKA_LABEL as decimal digits); the highest
        one counts. The node advances it with every group commit, before anything that
        depends on that commit leaves, and compares it with the store's own counter at
        start (docs/fleet.md, "Restarts")."""
        with self._lock:
            values = [v for v, _ in self._counter_slots()]
            return max(values) if values else None

    def advance_store_counter(self, value: int) -> None:
        """Record `value`; it never goes backwards (TokenError if asked to).

        The value goes into the slot holding the lower one, rewritten in place
        (C_SetAttributeValue on CKA_LABEL: SoftHSM2 rewrites that object's file, where
        creating an object makes a new file and destroying one unlinks it, several times
        slower). A crash in the middle of a rewrite loses at most the slot being written:
        the other still holds the previous value, one behind, which the start check
        allows for (docs/fleet.md, "Restarts")."""
        if not 0 <= value < 2**64:
            raise InvalidInput("store counter out of range")
        with self._lock:
            slots = self._counter_slots()
            current = max((v for v, _ in slots), default=None)
            if current is not None and value < current:
                raise TokenError(
                    f"the store counter cannot go back from {current} to {value}",
                    hint="the node store is older than the token: it was rolled back",
                )
            if value == current:
                return
            label = str(value)
            try:
                if len(slots) < COUNTER_SLOTS:
                    created = self._open_session().create_object(
                        {
                            Attribute.CLASS: ObjectClass.DATA,
                            Attribute.TOKEN: True,
                            Attribute.PRIVATE: True,
                            Attribute.MODIFIABLE: True,
                            Attribute.APPLICATION: STORE_COUNTER_APPLICATION,
                            Attribute.LABEL: label,
                        }
                    )
                    slots.append((value, created))
                else:
                    lowest = min(range(len(slots)), key=lambda i: slots[i][0])
                    slots[lowest][1][Attribute.LABEL] = label
                    slots[lowest] = (value, slots[lowest][1])
            except p11.PKCS11Error as err:
                self._slots = None  # read the token again next time
                raise self._device_error("record the store counter", err) from err

    def _counter_slots(self) -> list[tuple[int, Any]]:
        """The counter's slots (value, object), read from the token once per session: this
        process is the only writer (one sealer per token per process)."""
        if self._slots is not None:
            return self._slots
        session = self._open_session()
        try:
            found = list(
                session.get_objects(
                    {
                        Attribute.CLASS: ObjectClass.DATA,
                        Attribute.APPLICATION: STORE_COUNTER_APPLICATION,
                    }
                )
            )
            slots = [(_counter_value(o[Attribute.LABEL]), o) for o in found]
        except p11.PKCS11Error as err:
            raise self._device_error("read the store counter", err) from err
        self._slots = slots
        return slots

    # ---- the sealing key -----------------------------------------------------------------

    def ensure_sealing_key(self) -> bool:
        """Find the sealing key, or generate it inside the token if there is none.

        Returns True when it was generated now. An existing object under the label that is
        not a safe sealing key (extractable, imported, wrong type…) is refused with a
        TokenError, never used. Creation is guarded within this process only: provision a
        node from one process at a time.
        """
        with self._lock:
            session = self._open_session()
            key = self._find_key(session)
            created = key is None
            if key is None:
                key = self._generate_key(session)
            self._check_key(key)
            self._key = key
            return created

    def _open_session(self) -> Any:
        if self._session is None:
            raise TokenError("this TokenSealer is closed", hint="open a new TokenSealer")
        return self._session

    def _find_key(self, session: Any) -> Any:
        try:
            found = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: SEALING_KEY_LABEL}
                )
            )
        except p11.PKCS11Error as err:
            raise self._device_error("search for the sealing key", err) from err
        if len(found) > 1:
            raise TokenError(
                f"token {self.token_label!r} holds {len(found)} keys labelled "
                f"{SEALING_KEY_LABEL!r}; a node must have exactly one",
                hint="find which key sealed the node's files and remove the others with the "
                "token's admin tool",
            )
        return found[0] if found else None

    def _generate_key(self, session: Any, label: str = SEALING_KEY_LABEL) -> Any:
        template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
        }
        # CKA_MODIFIABLE/CKA_COPYABLE = False keep anyone logged in from turning usages on
        # later or copying the key under other attributes. A few older HSMs do not know
        # these attributes; the key is still non-extractable and sensitive without them.
        hardening: dict[Attribute, Any] = {Attribute.MODIFIABLE: False, Attribute.COPYABLE: False}
        for extra in (hardening, {}):
            try:
                return session.generate_key(
                    KeyType.AES,
                    256,
                    id=SEALING_KEY_ID,
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template={**template, **extra},
                )
            except (p11.AttributeTypeInvalid, p11.AttributeValueInvalid) as err:
                if extra:
                    continue
                raise self._device_error("generate the sealing key", err) from err
            except p11.PKCS11Error as err:
                raise self._device_error("generate the sealing key", err) from err
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_key(self, key: Any) -> None:
        for attribute, wanted, meaning in _REQUIRED_KEY_ATTRIBUTES:
            try:
                value = key[attribute]
            except p11.PKCS11Error as err:
                raise self._device_error(f"read the sealing key's {attribute.name}", err) from err
            if value != wanted:
                raise TokenError(
                    f"the key labelled {SEALING_KEY_LABEL!r} on token {self.token_label!r} is "
                    f"not {meaning} ({attribute.name} is {value!r}); it is not used to seal",
                    hint="a sealing key must be generated inside the token as sensitive and "
                    "non-extractable; remove this object only if nothing was sealed under it",
                )

    def _sealing_key(self) -> Any:
        self._open_session()
        if self._key is None:
            key = self._find_key(self._session)
            if key is None:
                raise TokenError(
                    f"token {self.token_label!r} has no sealing key",
                    hint="call ensure_sealing_key() when provisioning the node; if the node "
                    "was provisioned, this is the wrong token",
                )
            self._check_key(key)
            self._key = key
        return self._key

    # ---- keys that can be destroyed (the storage key's generations) -----------------------

    def generate_key(self, label: str) -> None:
        """Generate a sealing key under `label` inside the token (as the sealing key:
        sensitive, non-extractable, encrypt/decrypt only); TokenError if one exists."""
        with self._lock:
            session = self._open_session()
            if self._objects(session, label):
                raise TokenError(f"token {self.token_label!r} already holds a key {label!r}")
            self._check_key(self._generate_key(session, label))

    def key_labels(self, prefix: str) -> list[str]:
        """The labels of the token's secret keys that start with `prefix`."""
        with self._lock:
            session = self._open_session()
            try:
                found = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
                labels = [str(o[Attribute.LABEL]) for o in found]
            except p11.PKCS11Error as err:
                raise self._device_error("list its keys", err) from err
        return sorted(label for label in labels if label.startswith(prefix))

    def destroy_key(self, label: str) -> None:
        """Destroy every key labelled `label` in the token (C_DestroyObject): what it
        sealed can no longer be opened by anyone. Never the sealing key."""
        if label == SEALING_KEY_LABEL:
            raise InvalidInput("the sealing key is never destroyed")
        with self._lock:
            session = self._open_session()
            try:
                for key in self._objects(session, label):
                    key.destroy()
            except p11.PKCS11Error as err:
                raise self._device_error(f"destroy key {label!r}", err) from err

    def _objects(self, session: Any, label: str) -> list[Any]:
        try:
            return list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
                )
            )
        except p11.PKCS11Error as err:
            raise self._device_error(f"search for key {label!r}", err) from err

    def _labelled_key(self, label: str) -> Any:
        found = self._objects(self._open_session(), label)
        if len(found) != 1:
            raise TokenError(
                f"token {self.token_label!r} holds no key {label!r} (it was destroyed, or"
                " this is another token)",
                hint="what that key sealed cannot be opened any more",
            )
        self._check_key(found[0])
        return found[0]

    # ---- seal / unseal -------------------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes, *, key_label: str | None = None) -> bytes:
        """Encrypt and authenticate `plaintext` under the token's key, binding `aad`.
        `key_label`: under that key (`generate_key`) instead of the sealing key.

        Returns version (1 byte) || IV (12) || ciphertext (len(plaintext)) || tag (16).
        """
        data = _as_bytes(plaintext, "plaintext")
        ad = _as_bytes(aad, "aad")
        if len(data) > MAX_PLAINTEXT_LEN:
            raise InvalidInput(
                f"a sealed secret is at most {MAX_PLAINTEXT_LEN} bytes, got {len(data)}"
            )
        header = bytes([BLOB_VERSION]) + secrets.token_bytes(IV_LEN)
        params = GCMParams(header[1:], header[:1] + ad, TAG_LEN * 8)
        with self._lock:
            key = self._sealing_key() if key_label is None else self._labelled_key(key_label)
            try:
                body = key.encrypt(data, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            except p11.PKCS11Error as err:
                raise self._device_error("seal", err) from err
        if not isinstance(body, bytes) or len(body) != len(data) + TAG_LEN:
            raise TokenError(
                f"token {self.token_label!r} returned a malformed AES-GCM result",
                hint="the PKCS#11 module's CKM_AES_GCM does not behave as PKCS#11 v2.40 says",
            )
        return header + body

    def unseal(self, blob: bytes, aad: bytes, *, key_label: str | None = None) -> bytes:
        """Check and decrypt a blob made by `seal` on this token with the same `aad` (and
        `key_label`).

        Raises AuthenticationFailed when the blob is malformed, altered, sealed for another
        AAD or sealed by another token's key; TokenError when the token itself fails.
        """
        data = _as_bytes(blob, "sealed blob")
        ad = _as_bytes(aad, "aad")
        if len(data) < BLOB_OVERHEAD:
            raise AuthenticationFailed(
                f"sealed blob is {len(data)} bytes, shorter than the {BLOB_OVERHEAD}-byte "
                "minimum: it is truncated or not a sealed blob"
            )
        if len(data) > MAX_PLAINTEXT_LEN + BLOB_OVERHEAD:
            raise AuthenticationFailed(
                f"sealed blob is {len(data)} bytes, longer than any blob seal() makes"
            )
        if data[0] != BLOB_VERSION:
            raise AuthenticationFailed(
                f"sealed blob has version {data[0]}, expected {BLOB_VERSION}: it was altered "
                "or is not a sealed blob"
            )
        params = GCMParams(data[1:_HEADER_LEN], data[:1] + ad, TAG_LEN * 8)
        with self._lock:
            key = self._sealing_key() if key_label is None else self._labelled_key(key_label)
            try:
                plain = key.decrypt(
                    data[_HEADER_LEN:], mechanism=Mechanism.AES_GCM, mechanism_param=params
                )
            except _DECRYPT_FAILURES as err:
                if not self._token_answers(key):
                    raise self._device_error("unseal", err) from err
                raise AuthenticationFailed(
                    "sealed blob failed authentication: it was altered, sealed for another "
                    "purpose (AAD), or sealed by another token's key",
                    hint="a node secret opens only on the token that sealed it, for the same "
                    "purpose; restore the file from this node's backup or re-provision it",
                ) from None
            except p11.PKCS11Error as err:
                raise self._device_error("unseal", err) from err
        if not isinstance(plain, bytes) or len(plain) != len(data) - BLOB_OVERHEAD:
            raise TokenError(
                f"token {self.token_label!r} returned a malformed AES-GCM result",
                hint="the PKCS#11 module's CKM_AES_GCM does not behave as PKCS#11 v2.40 says",
            )
        return plain

    def _token_answers(self, key: Any) -> bool:
        """True if the token still serves this session (so a failed decrypt was the blob)."""
        try:
            return bool(key[Attribute.DECRYPT])
        except p11.PKCS11Error:
            return False

    def _device_error(self, action: str, err: p11.PKCS11Error) -> TokenError:
        return TokenError(
            f"PKCS#11 token {self.token_label!r} failed to {action}: {err!r}",
            hint="check that the token is present and healthy, then restart the node",
        )


def _counter_value(label: object) -> int:
    """A counter slot's value from its CKA_LABEL: decimal digits of an unsigned 64-bit
    integer. Anything else was not written by this module: refused, never guessed at."""
    text = label if isinstance(label, str) else ""
    if not (
        0 < len(text) <= _MAX_COUNTER_DIGITS
        and text.isascii()
        and text.isdigit()
        and int(text) < 2**64
        and str(int(text)) == text
    ):
        raise TokenError(
            "the token's store counter object holds no valid counter",
            hint="the counter objects were changed outside backupvault; the node cannot "
            "tell whether its store was rolled back: restore the token or re-provision the node",
        )
    return int(text)


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise InvalidInput(f"{what} must be bytes, not {type(value).__name__}")


# ---- sealed files ----------------------------------------------------------------------------


class SealedFile:
    """One node secret kept sealed in one file.

    The file holds exactly the sealed blob (see the module docstring); its AAD is
    `SECRET_AAD_PREFIX + name`, so a file copied over another secret's file, or renamed,
    fails to unseal. Writes are atomic: a temporary file in the same directory is written,
    fsync'ed and renamed over the target, then the directory is fsync'ed; a crash leaves
    either the old or the new file, never a torn one. Files are created mode 0600.
    """

    def __init__(self, path: Path, name: str, sealer: TokenSealer) -> None:
        if not isinstance(name, str) or _SECRET_NAME.fullmatch(name) is None:
            raise InvalidInput(
                f"secret name {name!r} is not allowed",
                hint="use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter/digit",
            )
        self._path = Path(path)
        self._name = name
        self._sealer = sealer

    @property
    def path(self) -> Path:
        return self._path

    @property
    def name(self) -> str:
        return self._name

    @property
    def aad(self) -> bytes:
        return SECRET_AAD_PREFIX + self._name.encode("utf-8")

    def __repr__(self) -> str:
        return f"<SealedFile {self._name!r} at {str(self._path)!r}>"

    def exists(self) -> bool:
        return self._path.is_file()

    def write(self, secret: bytes) -> None:
        """Seal `secret` and atomically replace the file with the sealed blob."""
        blob = self._sealer.seal(secret, self.aad)
        try:
            replace_durably(self._path, blob)
        except OSError as err:
            raise BackupVaultError(
                f"cannot write sealed secret {self._name!r} to {self._path}: {err.strerror}",
                hint="check that the directory exists, is writable and the disk is not full",
            ) from err

    def read(self) -> bytes:
        """Read and unseal the file; AuthenticationFailed if it was altered or swapped."""
        try:
            with open(self._path, "rb") as src:
                blob = src.read(MAX_PLAINTEXT_LEN + BLOB_OVERHEAD + 1)
        except FileNotFoundError as err:
            raise InvalidInput(
                f"sealed secret {self._name!r} is missing: no file at {self._path}",
                hint="provision the node first, or fix the node's data directory setting",
            ) from err
        except OSError as err:
            raise BackupVaultError(
                f"cannot read sealed secret {self._name!r} from {self._path}: {err.strerror}"
            ) from err
        try:
            return self._sealer.unseal(blob, self.aad)
        except AuthenticationFailed as err:
            raise AuthenticationFailed(
                f"sealed secret file {self._path} (secret {self._name!r}) failed "
                f"authentication: {err.message}",
                hint=err.hint,
            ) from None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the row key, destroyed by rotation -----------------------------------------------------

ROW_KEY_PREFIX: Final = "backupvault row key "
"""CKA_LABEL prefix of the token keys that seal the store's row key, one per generation."""
ROW_KEY_FILE: Final = "row-key.sealed"
ROW_KEY_NEXT: Final = "row-key.next.sealed"
_GENERATION_MAGIC: Final = b"G"


class RowKeyRing:
    """The key that seals the node store's rows (node/store.py), sealed by a token key of
    its own generation, so that destroying that token key makes every copy of the old row
    key useless: a backup or an older image of the data folder no longer opens
    (docs/pkcs11.md, "Erasure by key rotation"). The sealing key, which seals the other
    node secrets, is never destroyed, so it never seals the row key.

    `DATA/row-key.sealed` = "G" || u32 generation || blob (TokenSealer.seal under the
    token key `ROW_KEY_PREFIX + str(generation)`, AAD "backupvault node secret: row-key").
    A rotation writes `row-key.next.sealed` first, re-seals the store (which records the
    new generation in the same transaction), then renames the file and destroys the older
    token keys; `load` finishes or undoes one that a crash interrupted, by the generation
    the store records."""

    def __init__(self, sealer: TokenSealer, data_dir: Path) -> None:
        self._sealer = sealer
        self._current = data_dir / ROW_KEY_FILE
        self._next = data_dir / ROW_KEY_NEXT

    def exists(self) -> bool:
        return self._current.is_file()

    def create(self) -> None:
        """The first row key (generation 1)."""
        self._write(self._current, 1, os.urandom(32))

    def load(self, store_generation: int) -> bytes:
        """The row key of the generation the store was last sealed under (0: a new store:
        the current file's)."""
        try:
            current, key = self._read(self._current)
        except TokenError as err:
            raise self._copied_before_an_erase() or err from None
        if self._next.is_file():
            pending, next_key = self._read(self._next)
            if store_generation == pending:  # the store was re-sealed: finish
                os.replace(self._next, self._current)
                _fsync_directory(self._current.parent)
                self._destroy_all_but(pending)
                return next_key
            os.unlink(self._next)  # the store never took it: undo
            self._destroy_all_but(current)
        if store_generation not in (0, current):
            raise TokenError(
                f"the node store was sealed under row key generation {store_generation},"
                f" the data folder holds generation {current}",
                hint="restore the store and row-key.sealed from one backup, or wipe the"
                " store so the node catches up from the fleet",
            )
        return key

    def _copied_before_an_erase(self) -> TokenError | None:
        """Why the current file's row key cannot be opened when the token holds a newer
        row key than the one it names: the data folder is a copy (a backup, an old disk)
        from before the node erased a share, whose row key the erase destroyed (by design,
        docs/pkcs11.md "Erasure by key rotation"). None when that is not the case."""
        generation = self._header(self._current, self._current.read_bytes())
        newer = [
            int(suffix)
            for label in self._sealer.key_labels(ROW_KEY_PREFIX)
            if (suffix := label.removeprefix(ROW_KEY_PREFIX)).isascii()
            and suffix.isdigit()
            and int(suffix) > generation
        ]
        if not newer:
            return None
        return TokenError(
            f"this data folder is a copy from before the node erased a key share: its"
            f" {ROW_KEY_FILE} is generation {generation}, whose token key that erase"
            f" destroyed (the token holds generation {max(newer)}); by design no such copy"
            " opens again, so that the erased share stays erased",
            hint=f"start the node on the data folder it last ran with; if that is lost,"
            f" move store.sqlite* and {ROW_KEY_FILE} aside and run `backupvault node init`"
            " (it keeps the node's other keys and makes a new row key): the node then"
            " catches up from the fleet, without the key shares it held"
            ' (docs/operations.md, "Backing up node state")',
        )

    def read(self, generation: int) -> tuple[int, bytes]:
        """The row key of `generation` (0: the current one) and its generation, changing
        nothing: for a reader beside the running node (`node inspect`), whose rotation may
        be under way. `load` is the node's own: it finishes or undoes a rotation, which
        beside a running node would race it. Raises RowKeyMoved when neither file holds
        that generation any more or its token key was destroyed: the node rotated past it."""
        # The current file again last: a rotation may rename next to current in between.
        for path in (self._current, self._next, self._current):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            found = self._header(path, data)
            if generation not in (0, found):
                continue
            try:
                return found, self._unseal(data, found)
            except TokenError:
                if ROW_KEY_PREFIX + str(found) in self._sealer.key_labels(ROW_KEY_PREFIX):
                    raise  # the token failed: not a rotation
                break
        raise RowKeyMoved(
            f"the node rotated its row key past generation {generation} while it was read",
            hint="run the command again",
        )

    def generation(self) -> int:
        """The generation of the current row key."""
        data = self._current.read_bytes()[:5]
        return int.from_bytes(data[1:5], "big")

    def begin_rotation(self) -> tuple[int, bytes]:
        """A new token key and row key, sealed into the next file; (generation, key)."""
        current, _ = self._read(self._current)
        generation = current + 1
        self._sealer.destroy_key(ROW_KEY_PREFIX + str(generation))  # a crashed attempt
        key = os.urandom(32)
        self._write(self._next, generation, key)
        return generation, key

    def finish_rotation(self, generation: int) -> None:
        """The store is sealed under `generation`: make it current and destroy the older
        token keys (after this, nothing the node has opens an older copy)."""
        os.replace(self._next, self._current)
        _fsync_directory(self._current.parent)
        self._destroy_all_but(generation)

    def _destroy_all_but(self, generation: int) -> None:
        keep = ROW_KEY_PREFIX + str(generation)
        for label in self._sealer.key_labels(ROW_KEY_PREFIX):
            if label != keep:
                self._sealer.destroy_key(label)

    def _write(self, path: Path, generation: int, key: bytes) -> None:
        label = ROW_KEY_PREFIX + str(generation)
        if label not in self._sealer.key_labels(ROW_KEY_PREFIX):
            self._sealer.generate_key(label)
        blob = self._sealer.seal(key, SECRET_AAD_PREFIX + b"row-key", key_label=label)
        replace_durably(path, _GENERATION_MAGIC + generation.to_bytes(4, "big") + blob)

    def _read(self, path: Path) -> tuple[int, bytes]:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InvalidInput(
                f"cannot read the node's row key {path}: {err.strerror}",
                hint="run `backupvault node init`",
            ) from None
        generation = self._header(path, data)
        return generation, self._unseal(data, generation)

    @staticmethod
    def _header(path: Path, data: bytes) -> int:
        """The generation a row key file names."""
        if data[:1] != _GENERATION_MAGIC or len(data) < 5 + BLOB_OVERHEAD:
            raise TokenError(
                f"{path} is not a row key of this version",
                hint="re-provision the node: move its data folder aside, `node init`, and let"
                " it catch up from the fleet",
            )
        return int.from_bytes(data[1:5], "big")

    def _unseal(self, data: bytes, generation: int) -> bytes:
        label = ROW_KEY_PREFIX + str(generation)
        return self._sealer.unseal(data[5:], SECRET_AAD_PREFIX + b"row-key", key_label=label)
