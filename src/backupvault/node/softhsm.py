"""SoftHSM2 tokens for development and tests: one private token store per node.

`init_softhsm_token(directory, label, pin, so_pin)` lays out

    <directory>/softhsm2.conf   directories.tokendir = <directory>/tokens
    <directory>/tokens/         SoftHSM2's token store (one sub-directory per token)

and initializes a token with that label in it using `softhsm2-util`, unless one with that
label already exists there (then it is reused: the call is idempotent). It returns the
`TokenConfig` for the token, with `softhsm2_conf` set.

SoftHSM2 finds its token store through the environment variable SOFTHSM2_CONF, which it
reads when the module is initialized (C_Initialize), not when it is used. So a process
using such a token must have SOFTHSM2_CONF pointing at that conf file before it loads
the module:

* `TokenSealer(config)` does this itself when `config.softhsm2_conf` is set (it sets the
  variable before loading the module, and refuses to switch it while a sealer of another
  configuration is open in the process);
* `activate_softhsm_conf(path)` sets it in `os.environ` for code that loads the module
  some other way;
* `softhsm_env(path)` returns an environment for starting a node as a subprocess.

A process can therefore use one SoftHSM2 configuration at a time; several tokens in one
`directory` (different labels) can be used together. This is development tooling; the
PINs are typed at `softhsm2-util`'s prompts on a pseudo-terminal, never put on its command
line, where other local users could read them. Production nodes use a real HSM's PKCS#11
module and no SOFTHSM2_CONF.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from backupvault.errors import InvalidInput
from backupvault.files import replace_file
from backupvault.node.token import (
    SOFTHSM2_CONF_ENV,
    TokenConfig,
    TokenError,
    check_token_label,
)

__all__ = [
    "CONF_NAME",
    "MODULE_ENV",
    "MODULE_SEARCH_PATHS",
    "TOKENS_DIR_NAME",
    "activate_softhsm_conf",
    "find_softhsm_module",
    "init_softhsm_token",
    "softhsm_env",
    "softhsm_token_labels",
]

CONF_NAME: Final = "softhsm2.conf"
TOKENS_DIR_NAME: Final = "tokens"
MODULE_ENV: Final = "BACKUPVAULT_SOFTHSM2_MODULE"
"""Overrides where `find_softhsm_module` looks for libsofthsm2.so."""

MODULE_SEARCH_PATHS: Final = (
    "/usr/lib/softhsm/libsofthsm2.so",  # Debian, Ubuntu (package softhsm2)
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora, RHEL
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",  # Arch
    "/usr/local/lib/softhsm/libsofthsm2.so",  # built from source
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",  # macOS, Homebrew
    "/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so",
)

_UTIL: Final = "softhsm2-util"
_INSTALL_HINT: Final = "install SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2)"
_LABEL_LINE = re.compile(r"^\s*Label:[ \t]*(.*?)\s*$", re.MULTILINE)


def find_softhsm_module(override: Path | str | None = None) -> Path:
    """The path of libsofthsm2.so: `override`, else $BACKUPVAULT_SOFTHSM2_MODULE, else the
    first of MODULE_SEARCH_PATHS that exists."""
    explicit = override if override is not None else os.environ.get(MODULE_ENV)
    if explicit is not None and str(explicit):
        path = Path(explicit)
        if not path.is_file():
            raise TokenError(
                f"SoftHSM2 module {path} does not exist",
                hint=f"fix the module path (or ${MODULE_ENV}), or {_INSTALL_HINT}",
            )
        return path
    for candidate in MODULE_SEARCH_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    raise TokenError(
        "SoftHSM2's PKCS#11 module libsofthsm2.so was not found in "
        + ", ".join(MODULE_SEARCH_PATHS),
        hint=f"{_INSTALL_HINT}, or set ${MODULE_ENV} to its path",
    )


def activate_softhsm_conf(conf_path: Path) -> None:
    """Point this process's SoftHSM2 at `conf_path` (sets SOFTHSM2_CONF in os.environ).

    Takes effect at the module's next C_Initialize; call it before the module is loaded.
    """
    path = Path(conf_path)
    if not path.is_file():
        raise InvalidInput(f"SoftHSM2 configuration {path} does not exist")
    os.environ[SOFTHSM2_CONF_ENV] = str(path.resolve())


def softhsm_env(conf_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment (a copy of `base`, default os.environ) with SOFTHSM2_CONF set, for
    starting a node process that uses the token store of `conf_path`."""
    env = dict(os.environ if base is None else base)
    env[SOFTHSM2_CONF_ENV] = str(Path(conf_path).resolve())
    return env


def softhsm_token_labels(conf_path: Path) -> list[str]:
    """The labels of the initialized tokens in the store `conf_path` points at."""
    out = _run_util(["--show-slots"], Path(conf_path), secrets=())
    return [label for label in _LABEL_LINE.findall(out) if label]


def init_softhsm_token(
    directory: Path,
    token_label: str,
    pin: str,
    so_pin: str,
    *,
    module_path: Path | str | None = None,
) -> TokenConfig:
    """Create (or reuse) a SoftHSM2 token labelled `token_label` in `directory`.

    Writes `directory/softhsm2.conf` (token store `directory/tokens`, mode 0700) if it is
    missing, initializes the token with `softhsm2-util --init-token --free` unless one
    with that label already exists, and returns its TokenConfig. A reused token keeps
    its PINs; a wrong `pin` shows up as a TokenError when a TokenSealer logs in.
    """
    check_token_label(token_label)
    for what, value in (("PIN", pin), ("SO PIN", so_pin)):
        if not isinstance(value, str) or not 4 <= len(value) <= 255:
            raise InvalidInput(f"the SoftHSM2 {what} must be 4 to 255 characters")
    module = find_softhsm_module(module_path)
    root = Path(directory).resolve()
    tokens = root / TOKENS_DIR_NAME
    conf = root / CONF_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        tokens.mkdir(mode=0o700, exist_ok=True)
        _write_conf(conf, tokens)
    except OSError as err:
        raise TokenError(
            f"cannot set up the SoftHSM2 directory {root}: {err.strerror}",
            hint="check that the directory is writable",
        ) from err
    if token_label not in softhsm_token_labels(conf):
        _init_token(token_label, pin, so_pin, conf)
        if token_label not in softhsm_token_labels(conf):
            raise TokenError(
                f"softhsm2-util reported success but no token {token_label!r} is in {tokens}"
            )
    return TokenConfig(module_path=module, token_label=token_label, pin=pin, softhsm2_conf=conf)


def _write_conf(conf: Path, tokens: Path) -> None:
    text = (
        "# SoftHSM2 configuration of one backupvault development node,\n"
        "# written by backupvault.node.softhsm. Use it with SOFTHSM2_CONF=<this file>.\n"
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    if conf.is_file() and conf.read_text(encoding="utf-8") == text:
        return
    replace_file(conf, text.encode(), mode=0o644)  # never through a planted link


#: How many PIN prompts softhsm2-util --init-token shows when no PIN is on its command
#: line (the SO PIN, again, the user PIN, again); more mean one was refused.
_PIN_PROMPTS: Final = 4
_UTIL_TIMEOUT: Final = 60.0


def _init_token(label: str, pin: str, so_pin: str, conf: Path) -> None:
    """`softhsm2-util --init-token --free --label LABEL`, its PINs typed at its prompts on
    a pseudo-terminal: on its command line (`--pin`, `--so-pin`) any host user could read
    them in the process list while it runs. softhsm2-util reads PINs only from a terminal,
    not from a pipe."""
    util = shutil.which(_UTIL)
    if util is None:
        raise TokenError(f"{_UTIL} was not found on PATH", hint=_INSTALL_HINT)
    args = [util, "--init-token", "--free", "--label", label]
    answers = {b"SO PIN:": so_pin, b"user PIN:": pin}
    terminal, its_end = pty.openpty()
    try:
        child = subprocess.Popen(
            args,
            env=softhsm_env(conf),
            stdin=its_end,
            stdout=its_end,
            stderr=its_end,
            start_new_session=True,
        )
    except OSError as err:
        os.close(terminal)
        raise TokenError(f"cannot run {_UTIL}: {err.strerror}", hint=_INSTALL_HINT) from None
    finally:
        os.close(its_end)
    output, status = _answer_prompts(child, terminal, answers)
    if status != 0:
        for secret in (pin, so_pin):
            output = output.replace(secret, "***")
        raise TokenError(
            f"{_UTIL} --init-token failed (exit {status}): {output.strip()}",
            hint=f"check {conf} and its token directory",
        )


def _answer_prompts(
    child: subprocess.Popen[bytes], terminal: int, answers: dict[bytes, str]
) -> tuple[str, int]:
    """Type the answer to each prompt of `child` on `terminal` (what it wrote since the last
    answer ends with a key of `answers`); its output and exit status. It is killed (-1) at
    the time limit, or at a prompt it has no answer for or one prompt too many."""
    deadline = time.monotonic() + _UTIL_TIMEOUT
    output = since = b""
    prompts = 0
    try:
        while True:
            ready, _, _ = select.select([terminal], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                child.kill()
                break
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            output, since = output + chunk, since + chunk
            prompt = since.rstrip()
            if not prompt.endswith(b":"):
                continue
            answer = next((a for end, a in answers.items() if prompt.endswith(end)), None)
            prompts += 1
            if answer is None or prompts > _PIN_PROMPTS:
                child.kill()
                break
            os.write(terminal, answer.encode() + b"\n")
            since = b""
    finally:
        os.close(terminal)
    code = child.wait()
    return output.decode(errors="replace"), code if code >= 0 else -1


def _run_util(args: list[str], conf: Path, secrets: Iterable[str]) -> str:
    util = shutil.which(_UTIL)
    if util is None:
        raise TokenError(f"{_UTIL} was not found on PATH", hint=_INSTALL_HINT)
    env = softhsm_env(conf)
    try:
        done = subprocess.run(
            [util, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        # Never format the exception: its text holds the command line, PINs included.
        raise TokenError(f"{_UTIL} {args[0]} did not finish within 60 s") from None
    except OSError as err:
        raise TokenError(f"cannot run {_UTIL}: {err.strerror}", hint=_INSTALL_HINT) from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        for secret in secrets:
            output = output.replace(secret, "***")
        raise TokenError(
            f"{_UTIL} {args[0]} failed (exit {done.returncode}): {output}",
            hint=f"check {conf} and its token directory",
        )
    return done.stdout
