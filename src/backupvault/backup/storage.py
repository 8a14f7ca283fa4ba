"""Where backups live: a folder named by a URL, reached through fsspec.

URLs:
  /path/to/folder, ./rel, ~/folder,           local folder (the default)
  file:///path, file:/path
  webdav+https://[user[:password]@]host[:port]/path   WebDAV (webdav4); webdav+http for
                                              plain HTTP (loopback/testing only)
  s3://bucket/prefix                          S3 or compatible (s3fs)
  sftp://, gs://, gcs://, az://, abfs://      passed to fsspec as is (its package needed)
Anything else with a scheme (`s4://`, `fiel:///`, `webdav+htps://`) and a known scheme
without its `//` (`s3:/bucket`) is refused with this list, rather than read as a local
folder named `s3:`.

Credentials: WebDAV takes them from the URL's userinfo (percent-encoded) or, if the URL has
none, from BACKUPVAULT_WEBDAV_USER and BACKUPVAULT_WEBDAV_PASSWORD. S3 uses the usual AWS
sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL for a
non-AWS endpoint...). `storage_options` are passed to the fsspec filesystem for anything else.
Passwords never appear in messages: URLs are shown with the password replaced by "***".

Single-blob backups (read only; new backups are repository snapshots, backup/repo): one object
per backup, `backup-<UTC time>-<backup id hex>.bvb`, written by older versions under a hidden
temporary name `.<final name>.<random>.partial` and renamed once complete. A partial object
left by a killed backup is listed by `partials()`; `backup prune` removes it once a day old.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from cryptography.utils import CryptographyDeprecationWarning

from backupvault.backup.errors import (
    BackupNotFound,
    StorageError,
    StorageNotFound,
    StorageUnavailable,
)
from backupvault.errors import UsageError

OBJECT_SUFFIX = ".bvb"
_NAME_RE = re.compile(r"^backup-(\d{8}T\d{6}\.\d{6}Z)-([0-9a-f]{32})\.bvb$")
_PARTIAL_RE = re.compile(r"^\.(backup-.+\.bvb)\.[0-9a-f]{16}\.partial$")
_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
#: Schemes a storage URL may have ("" is a plain local path).
SCHEMES = ("file", "s3", "webdav+https", "webdav+http", "sftp", "gs", "gcs", "az", "abfs")
SUPPORTED_FORMS = (
    "supported: a folder path, file:///path, s3://bucket/prefix, "
    "webdav+https://host/path, webdav+http://, sftp://, gs://, az://"
)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
ENV_WEBDAV_USER = "BACKUPVAULT_WEBDAV_USER"
ENV_WEBDAV_PASSWORD = "BACKUPVAULT_WEBDAV_PASSWORD"
#: Exceptions (by the name of the class or of a base class) of a server that did not answer
#: or dropped the connection: httpx's (NetworkError: connect, read, write; TimeoutException:
#: connect, read, write, pool; RemoteProtocolError: disconnected unanswered), aiohttp's
#: (fsspec), botocore's (s3fs), paramiko's and the OS's. They are `StorageUnavailable` (exit
#: 5, try again later); any other failure (credentials, permissions, a missing package) is
#: not.
UNREACHABLE = frozenset({
    "NetworkError", "TimeoutException", "RemoteProtocolError", "TimeoutError",
    "ClientConnectorError", "EndpointConnectionError", "ConnectTimeoutError",
    "NoValidConnectionsError", "ConnectionRefusedError", "gaierror", "ServerDisconnectedError",
    "ConnectionResetError",
})  # fmt: skip


@dataclass(frozen=True)
class StoredBackup:
    """One backup object as the listing shows it (its name is not authenticated)."""

    name: str
    backup_id: str
    created_at: datetime
    size: int | None


@dataclass(frozen=True)
class PartialUpload:
    """A hidden object of a backup that never completed, and when that backup started."""

    name: str
    started_at: datetime | None
    size: int | None


def check_url(url: str) -> tuple[str, str]:
    """(scheme, rest) of a storage URL; scheme "" for a local path. Refuses unknown schemes
    and known ones without their "//", naming the supported forms."""
    if not url:
        raise UsageError("the storage URL is empty")
    match = _SCHEME_RE.match(url)
    if match is None or len(match.group(1)) == 1:  # no scheme (or a drive letter)
        return "", url
    scheme, rest = match.group(1).lower(), match.group(2)
    supported = SUPPORTED_FORMS
    if scheme == "file" and rest.startswith("/") and not rest.startswith("//"):
        return "file", "//" + rest  # file:/abs is the file URL file:///abs
    if scheme not in SCHEMES:
        if not rest.startswith("//"):
            return "", url  # a local name with a colon, such as "backups:2026"
        raise UsageError(
            f"unknown storage URL scheme {scheme!r} in {redact_url(url)}", hint=supported
        )
    if not rest.startswith("//"):
        raise UsageError(
            f"malformed storage URL {redact_url(url)}: write {scheme}://...", hint=supported
        )
    return scheme, rest


def object_name(backup_id: bytes, created_at: datetime) -> str:
    return f"backup-{created_at.astimezone(UTC).strftime(_TIME_FORMAT)}-{backup_id.hex()}.bvb"


def parse_object_name(name: str) -> tuple[str, datetime] | None:
    """(backup id hex, creation time) from a backup object's name, or None if it is not one."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    try:
        created = datetime.strptime(match.group(1), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return match.group(2), created


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def entry_name(entry: object) -> str | None:
    """The last component of an fsspec listing entry's name, or None if it has none that
    is a string (a server lists what it likes: a missing or odd field raised KeyError)."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        return None
    return name.rstrip("/").rsplit("/", 1)[-1]


def entry_size(entry: dict[str, Any]) -> int | None:
    """An fsspec listing entry's size: 0 if it gives none (as fsspec does for some
    stores), None if what it gives is no byte count (`int("lots")` raised ValueError, and
    a negative or fractional size was taken as one)."""
    size = entry.get("size")
    if size is None:
        return 0
    if isinstance(size, str) and size.isascii() and size.isdigit():
        return int(size)
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        return size
    if isinstance(size, float) and size.is_integer() and size >= 0:
        return int(size)
    return None


#: fsspec's sftp file systems (sshfs; fsspec's own, on paramiko). They write an object in
#: place (`Backend.put` renames a temporary), and sshfs's cat_file reads a whole object
#: whatever range is asked (`read_range`).
SFTP_FILE_SYSTEMS: Final = frozenset({"SSHFileSystem", "SFTPFileSystem"})


def read_range(fs: Any, path: str, start: int, end: int | None) -> bytes:
    """Bytes [start, end) of a remote object (to its end if `end` is None), through a file
    handle, for sftp: sshfs's cat_file read the whole object whatever range was asked, so
    every ranged read of sftp storage (a snapshot's summary, a pack's header, a restore's
    chunks) was refused as "storage sent N bytes for a range of M", and a read bounded to
    the largest object a writer makes, or to a backup's header, read all there was
    (review s61)."""
    with fs.open(path, "rb") as handle:
        handle.seek(start)
        if end is None:
            return bytes(handle.read())
        pieces: list[bytes] = []
        wanted = max(0, end - start)
        while wanted:
            piece = bytes(handle.read(wanted))
            if not piece:
                break  # the object ends before `end`
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces)


def local_files(folder: str, *, follow_symlinks: bool) -> dict[str, int]:
    """{name: size} of the files in a local folder. One deleted between the listing and its
    stat (another device's forget or prune, a partial object renamed) is left out; the
    others are all there. FileNotFoundError if the folder itself is missing."""
    found: dict[str, int] = {}
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                if entry.is_file(follow_symlinks=follow_symlinks):
                    found[entry.name] = entry.stat(follow_symlinks=follow_symlinks).st_size
            except FileNotFoundError:
                continue
    return found


class Storage:
    """A folder of backups behind an fsspec filesystem."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self._secret: str | None = None
        options = dict(storage_options or {})
        try:
            self._fs, self.root = self._connect(url, options)
        except (UsageError, StorageError):
            raise
        except Exception as exc:
            raise self._error("cannot open storage", exc) from None
        self.root = self.root.rstrip("/") or "/"
        self.is_local = self._fs is None
        if self.is_local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise UsageError(
                f"storage {self.display_url} is a file, not a folder",
                hint="give --storage the folder that holds the backups (a backup creates it)",
            )

    @property
    def fs(self) -> Any:
        """The fsspec filesystem; for a local folder made on first use (importing fsspec
        takes longer than a small backup, and the repository format reads local folders
        with os calls)."""
        if self._fs is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fs = LocalFileSystem()
        return self._fs

    def _connect(self, url: str, options: dict[str, Any]) -> tuple[Any, str]:
        """(filesystem, root); the filesystem is None for a local folder."""
        scheme, rest = check_url(url)
        if scheme == "":
            return None, str(Path(url).expanduser().absolute())
        if scheme == "file":
            parts = urlsplit("file:" + rest)
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise UsageError(
                    f"file URL {url} must name an absolute path: file:///path or file:/path",
                    hint=SUPPORTED_FORMS,
                )
            return None, str(Path(unquote(parts.path)).absolute())
        if scheme in ("webdav+http", "webdav+https"):
            return self._connect_webdav(url, scheme, options)
        if not urlsplit(url).netloc:
            raise UsageError(
                f"storage URL {redact_url(url)} names no bucket or host", hint=SUPPORTED_FORMS
            )
        import fsspec

        with warnings.catch_warnings():
            # A backend's own dependencies warn of their deprecations as they are imported
            # (asyncssh, for sftp://, of DSA in `cryptography`): on a user's stderr, under
            # `--json` and `-q` too, they told nothing the user can act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            fs, root = fsspec.core.url_to_fs(scheme + ":" + rest, **options)
        return fs, cast(str, root)

    def _connect_webdav(self, url: str, scheme: str, options: dict[str, Any]) -> tuple[Any, str]:
        from webdav4.fsspec import WebdavFileSystem

        parts = urlsplit(url)
        if not parts.hostname:
            raise UsageError(f"WebDAV URL has no host: {self.display_url}")
        http = "http" if scheme == "webdav+http" else "https"
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        base_url = f"{http}://{host}" + (f":{parts.port}" if parts.port else "")
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        else:
            user = os.environ.get(ENV_WEBDAV_USER, "")
            password = os.environ.get(ENV_WEBDAV_PASSWORD, "")
        if user or password:
            options.setdefault("auth", (user, password))
            self._secret = password or None
        root = unquote(parts.path) or "/"
        return WebdavFileSystem(base_url, **options), root

    def _error(self, what: str, exc: BaseException) -> StorageError:
        # The system's own words for a local file's error ("Not a directory"), not
        # Python's class name (user and storage reviews s42); a remote library's error
        # keeps its name, which says which layer failed.
        if isinstance(exc, OSError) and exc.strerror and type(exc).__module__ == "builtins":
            detail = exc.strerror
        else:
            detail = f"{type(exc).__name__}: {exc}"
        if self._secret:
            for secret in {self._secret, quote(self._secret, safe="")}:
                detail = detail.replace(secret, "***")
        hint = None
        if type(exc).__name__ == "NoCredentialsError":  # botocore's, through s3fs
            hint = (
                "give S3 credentials the usual AWS ways: AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials (and"
                " AWS_ENDPOINT_URL for a server other than AWS)"
            )
        elif isinstance(exc, ImportError):  # fsspec names the package a scheme needs
            hint = (
                "this storage needs an optional package: install the one named into"
                f" backupvault's environment ({sys.executable} -m pip install NAME)"
            )
        unreachable = any(cls.__name__ in UNREACHABLE for cls in type(exc).__mro__)
        kind = StorageUnavailable if unreachable else StorageError
        return kind(f"{what} at {self.display_url}: {detail}", hint=hint)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}" if self.root != "/" else f"/{name}"

    def _entries(self, missing_ok: bool) -> list[dict[str, Any]]:
        try:
            if self.is_local:
                return self._local_entries()
            return cast(list[dict[str, Any]], self.fs.ls(self.root, detail=True))
        except FileNotFoundError:
            if missing_ok:
                return []
            raise StorageNotFound(
                f"storage not found: {self.display_url} does not exist",
                hint="check the --storage URL (a backup creates the folder)",
            ) from None
        except NotADirectoryError:
            raise StorageNotFound(f"storage {self.display_url} is a file, not a folder") from None
        except Exception as exc:
            raise self._error("cannot list backups", exc) from None

    def _local_entries(self) -> list[dict[str, Any]]:
        """What `fs.ls(root, detail=True)` gives of a local folder's files (following
        links, as fsspec does), in the fields used here, without importing fsspec (which
        takes longer than `backup list` itself)."""
        return [
            {"name": os.path.join(self.root, name), "type": "file", "size": size}
            for name, size in local_files(self.root, follow_symlinks=True).items()
        ]

    def list(self, missing_ok: bool = True) -> list[StoredBackup]:
        """Every backup object under the root, oldest first. A missing root lists as empty
        if `missing_ok`, else raises `StorageNotFound`."""
        found: dict[str, StoredBackup] = {}  # by name: storage may list one many times
        for entry in self._entries(missing_ok):
            name = entry_name(entry)
            if name is None or entry.get("type") not in (None, "file") or name in found:
                continue
            parsed = parse_object_name(name)
            if parsed is None:
                continue
            found[name] = StoredBackup(name, parsed[0], parsed[1], _listed_size(entry))
        return sorted(found.values(), key=lambda b: (b.created_at, b.name))

    def partials(self) -> builtins.list[PartialUpload]:
        """Hidden objects of backups that never completed, oldest first."""
        found: dict[str, PartialUpload] = {}
        for entry in self._entries(missing_ok=True):
            name = entry_name(entry)
            match = _PARTIAL_RE.match(name) if name is not None else None
            if name is None or match is None or entry.get("type") not in (None, "file"):
                continue
            parsed = parse_object_name(match.group(1))
            found[name] = PartialUpload(name, parsed[1] if parsed else None, _listed_size(entry))
        return sorted(
            found.values(),
            key=lambda p: (p.started_at or datetime.min.replace(tzinfo=UTC), p.name),
        )

    def read_start(self, name: str, size: int) -> bytes:
        """The first `size` bytes of an object (fewer if it is shorter)."""
        try:
            if type(self.fs).__name__ in SFTP_FILE_SYSTEMS:
                return read_range(self.fs, self.path(name), 0, size)
            return cast(bytes, self.fs.cat_file(self.path(name), start=0, end=size))
        except FileNotFoundError:
            raise BackupNotFound(f"backup {name} not found at {self.display_url}") from None
        except Exception as exc:
            raise self._error(f"cannot read {name}", exc) from None

    def find(self, backup_id: str) -> StoredBackup:
        """The backup whose id is (or starts with) `backup_id`, by object name."""
        backups = self.list(missing_ok=False)
        listed = "`backupvault backup list` shows the backups and their ids"
        if not backups:
            raise BackupNotFound(
                f"no backups at {self.display_url}",
                hint="check the --storage URL (`backup list --storage URL` shows what is there)",
            )
        wanted = backup_id.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{1,32}", wanted):
            raise UsageError(f"backup id must be hexadecimal, got {backup_id!r}", hint=listed)
        matches = [b for b in backups if b.backup_id.startswith(wanted)]
        if not matches:
            raise BackupNotFound(f"no backup with id {wanted} at {self.display_url}", hint=listed)
        if len(matches) > 1:
            raise UsageError(
                f"backup id prefix {wanted} matches {len(matches)} backups",
                hint="give more digits of the id; " + listed,
            )
        return matches[0]

    def size(self, name: str) -> int | None:
        try:
            size = self.fs.size(self.path(name))
        except FileNotFoundError:
            raise BackupNotFound(f"backup {name} not found at {self.display_url}") from None
        except Exception:
            return None  # the size is only for progress
        return int(size) if size is not None else None

    @contextlib.contextmanager
    def open_read(self, name: str) -> Iterator[ObjectReader]:
        try:
            handle = self.fs.open(self.path(name), "rb")
        except FileNotFoundError:
            raise BackupNotFound(f"backup {name} not found at {self.display_url}") from None
        except Exception as exc:
            raise self._error(f"cannot open {name}", exc) from None
        try:
            yield ObjectReader(handle, self, name)
        finally:
            with contextlib.suppress(Exception):
                handle.close()


def _listed_size(entry: dict[str, Any]) -> int | None:
    """A single-blob object's listed size, None if storage gives none that is one."""
    return entry_size(entry) if entry.get("size") is not None else None


class ObjectReader:
    """A read-only file whose failures become `StorageError` (without credentials)."""

    def __init__(self, handle: Any, storage: Storage, name: str) -> None:
        self._handle = handle
        self._storage = storage
        self._name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return cast(bytes, self._handle.read(size))
        except Exception as exc:
            raise self._storage._error(f"cannot read {self._name}", exc) from None

    def close(self) -> None:
        self._handle.close()
