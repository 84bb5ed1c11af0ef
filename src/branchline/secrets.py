"""Encrypted per-environment secrets: sealing, keys, generation and rotation.

Values are sealed with AES-GCM (`cryptography`) before they reach the store: a
random 12-byte nonce per value, and associated data that binds the ciphertext
to its project, environment and name (a ciphertext copied to another row does
not decrypt). Each row also records the id of the key that sealed it, so a
wrong key is named instead of failing with a bare authentication error.

The key is `BRANCHLINE_SECRET_KEY` (base64 of 32 bytes) or, when that is unset,
`<state_dir>/secret.key`, created on first use with mode 0600 and refused when
group or others may read it.

Environments: `production`, `preview` (shared by every preview), `test`, and
`preview-<pr>` (one preview's own values, overriding `preview`). Names declared
with `generate = true` under `[secrets.preview]` get a value of their own in
each preview: 32 random bytes, base64. `local` has no secrets.

No value ever reaches an exception message, a repr or a log: `SecretInfo` has
no value field, and plaintext exists only in what `get_all` returns (which the
engine and compute pass to processes as environment variables and mask in logs).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import os
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from secrets import token_bytes, token_hex
from typing import Any

from branchline import naming
from branchline.config import Config, SecretsConfig, SecretScope
from branchline.environment import (
    LOCAL,
    PRODUCTION,
    SECRET_SCOPES,
    SHARED_PREVIEW,
    TEST,
    Environment,
    secret_layers,
    secret_scope,
    secret_target,
)
from branchline.errors import BranchlineError, UsageError
from branchline.masking import MIN_SECRET_LENGTH, SEALED_PREFIX
from branchline.store import Store
from branchline.store import secrets as rows

__all__ = [
    "GENERATED_BYTES",
    "KEY_BYTES",
    "KEY_ENV",
    "KEY_FILENAME",
    "MAX_VALUE_BYTES",
    "NO_SECRETS",
    "SCOPES",
    "Rotation",
    "Sealed",
    "SecretBox",
    "SecretError",
    "SecretInfo",
    "Secrets",
    "generate_value",
    "key_id",
    "load_key",
    "scope_of",
    "validate_environment",
    "validate_name",
    "validate_value",
]

KEY_ENV = "BRANCHLINE_SECRET_KEY"
KEY_FILENAME = "secret.key"
KEY_BYTES = 32
NONCE_BYTES = 12
GENERATED_BYTES = 32
MAX_VALUE_BYTES = 64 * 1024  # an environment variable must stay well under 128 KiB
SCOPES = SECRET_SCOPES
NO_SECRETS = LOCAL  # a deploy environment without a secrets scope

_AD_PREFIX = b"branchline/secret/v1\x00"
_KEY_HINT = (
    'make one with `openssl rand -base64 32` (or `python -c "import base64, os; '
    'print(base64.b64encode(os.urandom(32)).decode())"`)'
)

RotatedHook = Callable[[str, str], Awaitable[None]]
"""Called as `on_rotated(environment, name)` after a value was replaced."""


class SecretError(BranchlineError):
    """A secret or the key that seals secrets could not be used."""

    default_hint = "Run `branchline secret list` to see which secrets are set."


# --------------------------------------------------------------------------- names


def validate_environment(environment: str, *, reading: bool = False) -> str:
    """`environment` if secrets can live there (`local` too when `reading`)."""
    return secret_target(environment, reading=reading)


def validate_name(name: str) -> str:
    """`name` if it can be an environment variable's name (naming's one rule)."""
    return naming.validate_secret_name(name)


def validate_value(value: str) -> str:
    """`value` if it can be stored and passed as an environment variable."""
    if not value:
        raise UsageError("the value is empty", hint="give the secret a value")
    if "\x00" in value:
        raise UsageError(
            "the value contains a NUL character",
            hint="environment variables cannot hold NUL; base64-encode binary values",
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(
            "the value is not valid Unicode text", hint="store it as UTF-8 text"
        ) from None
    if size > MAX_VALUE_BYTES:
        raise UsageError(
            f"the value is {size} bytes long; at most {MAX_VALUE_BYTES} fit in an "
            "environment variable",
            hint="keep large material in a file and store its path or a smaller key",
        )
    if len(value) < MIN_SECRET_LENGTH:
        raise UsageError(
            f"the value is shorter than {MIN_SECRET_LENGTH} characters",
            hint="so short a value could not be masked in logs; use a longer one",
        )
    return value


scope_of = secret_scope


def generate_value() -> str:
    """A fresh generated secret: 32 random bytes, base64 (like `openssl rand -base64 32`)."""
    return base64.b64encode(token_bytes(GENERATED_BYTES)).decode("ascii")


# ---------------------------------------------------------------------------- keys


def key_id(key: bytes) -> str:
    """A short public name for a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def _decode_key(text: str) -> bytes | None:
    """32 bytes from their base64 text (standard or URL-safe), else None."""
    compact = "".join(text.split()).encode("ascii", "replace")
    for altchars in (None, b"-_"):
        try:
            key = base64.b64decode(compact, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    return None


def load_key(state_dir: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The key that seals secrets: `BRANCHLINE_SECRET_KEY` when set, else the key file
    `<state_dir>/secret.key` (created with mode 0600 on first use)."""
    env = os.environ if env is None else env
    text = env.get(KEY_ENV, "")
    path = state_dir / KEY_FILENAME
    if text.strip():
        key = _decode_key(text)
        if key is None:
            raise SecretError(
                f"{KEY_ENV} is not the base64 encoding of {KEY_BYTES} bytes",
                hint=f"set {KEY_ENV} to the key that sealed the secrets; to start anew "
                f"{_KEY_HINT}; unset it to use the key file {path}",
            )
        return key
    return _key_file(path)


def _key_file(path: Path) -> bytes:
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = token_bytes(KEY_BYTES)
    content = base64.b64encode(key) + b"\n"
    # Written in full under a private name, then linked into place: the link fails
    # when another process got there first, and then its key is the key.
    temp = path.with_name(f".{path.name}.{os.getpid()}.{token_hex(4)}")
    _write_new(temp, content)
    try:
        os.link(temp, path)
    except FileExistsError:
        return _read_key_file(path)
    except OSError:
        # No hard links on this file system: create the file itself exclusively.
        try:
            _write_new(path, content)
        except FileExistsError:
            return _read_key_file(path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return key


def _write_new(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    """The key in `path`; FileNotFoundError when there is none."""
    deadline = time.monotonic() + 2.0
    while True:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise SecretError(
                    f"the key file {path} is not a regular file",
                    hint=f"remove it, or set {KEY_ENV}",
                )
            if mode & 0o077:
                raise SecretError(
                    f"the key file {path} is open to other users "
                    f"(mode {stat.S_IMODE(mode):04o}); it is not used",
                    hint=f"run `chmod 600 {path}`; if someone else may have read it, set every "
                    "secret again under a new key",
                )
            data = fh.read(4096)
        # Only a file system without hard links shows a key file before it is written.
        if data or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    key = _decode_key(data.decode("ascii", "replace"))
    if key is None:
        raise SecretError(
            f"the key file {path} does not hold the base64 encoding of {KEY_BYTES} bytes",
            hint=f"restore it from a backup or set {KEY_ENV} to the key; if the key is lost, "
            "remove the file and set every secret again",
        )
    return key


# ---------------------------------------------------------------------------- box


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed value: safe to store, useless without the key."""

    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    key_id: str


def _associated_data(project: str, environment: str, name: str) -> bytes:
    return _AD_PREFIX + "\x00".join((project, environment, name)).encode("utf-8")


class SecretBox:
    """Seals and opens values with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretError(
                f"a secret key must be {KEY_BYTES} bytes", hint=f"{_KEY_HINT}; set {KEY_ENV}"
            )
        # Imported here: only commands that seal or open a value pay for it.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.key_id = key_id(key)

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id!r})"

    def seal(self, value: str, *, project: str, environment: str, name: str) -> Sealed:
        nonce = token_bytes(NONCE_BYTES)
        try:
            plain = value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                "the value is not valid Unicode text", hint="store it as UTF-8 text"
            ) from None
        ad = _associated_data(project, environment, name)
        return Sealed(nonce, self._aead.encrypt(nonce, plain, ad), self.key_id)

    def unseal(self, sealed: Sealed, *, project: str, environment: str, name: str) -> str:
        where = f"the secret {name} of {environment}"
        if sealed.key_id and sealed.key_id != self.key_id:
            raise SecretError(
                f"{where} was sealed with another key (id {sealed.key_id}); "
                f"the key in use has id {self.key_id}",
                hint=f"set {KEY_ENV} to the key that sealed it (id {sealed.key_id}), or set "
                f"it again with `branchline secret set {name} --env {environment}`",
            )
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(
                sealed.nonce, sealed.ciphertext, _associated_data(project, environment, name)
            )
        except InvalidTag:
            raise SecretError(
                f"{where} does not decrypt: it was sealed for another project, environment "
                "or name, or altered in the store",
                hint=f"set it again with `branchline secret set {name} --env {environment}`",
            ) from None
        return plain.decode("utf-8")


# ------------------------------------------------------------------------ secrets


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What may be shown about a secret. There is deliberately no value here."""

    environment: str
    name: str
    updated_at: datetime
    generated: bool
    key_id: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "name": self.name,
            "updated_at": self.updated_at,
            "generated": self.generated,
            "key_id": self.key_id,
        }


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation replaced (never the new value). `environments` is empty when
    there was nothing to rotate (no preview holds a value of the name yet)."""

    name: str
    environments: tuple[str, ...]
    rotated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "environments": list(self.environments),
            "rotated_at": self.rotated_at,
        }


def _info(row: rows.SecretMeta | rows.SealedRow) -> SecretInfo:
    return SecretInfo(row.environment, row.name, row.updated_at, row.generated, row.key_id)


class Secrets:
    """One project's secrets. Construction does no I/O.

    `key` may be None for work that needs no plaintext (list, delete, missing), or
    a function that loads it on first use (so that building a kit reads no file).
    """

    def __init__(
        self,
        store: Store | rows.SealedStore,
        project: str,
        config: SecretsConfig,
        key: bytes | Callable[[], bytes] | None,
    ) -> None:
        # Where the sealed values live: the state database, or another SealedStore.
        self.rows = rows.SecretRows(store, project) if isinstance(store, Store) else store
        self.project = project
        self.config = config
        self._load = key if callable(key) else None
        self._box = SecretBox(key) if isinstance(key, bytes) else None

    def __repr__(self) -> str:
        return f"Secrets(project={self.project!r}, box={self._box!r})"

    @property
    def box(self) -> SecretBox:
        if self._box is None and self._load is not None:
            self._box = SecretBox(self._load())
        if self._box is None:
            raise SecretError(
                "no secret key was loaded for this operation",
                hint=f"set {KEY_ENV}, or let branchline create its key file",
            )
        return self._box

    # -- what the config declares ---------------------------------------------

    def scope(self, environment: str) -> SecretScope:
        """The declaration that applies to `environment` (empty for `local`)."""
        name = scope_of(validate_environment(environment, reading=True))
        declared = {PRODUCTION: self.config.production, SHARED_PREVIEW: self.config.preview,
                    TEST: self.config.test}  # fmt: skip
        return declared.get(name, SecretScope())

    def declares(self, environment: str, name: str) -> bool:
        return name in self.scope(environment).names

    def generates(self, environment: str, name: str) -> bool:
        return name in self.scope(environment).generate

    # -- values ----------------------------------------------------------------

    async def set(self, environment: str, name: str, value: str) -> SecretInfo:
        """Seal and store a value (replacing any earlier one); returns its metadata."""
        validate_environment(environment)
        validate_name(name)
        validate_value(value)
        return await self._store(environment, name, value, generated=False)

    async def _store(
        self, environment: str, name: str, value: str, *, generated: bool
    ) -> SecretInfo:
        sealed = self.box.seal(value, project=self.project, environment=environment, name=name)
        moment = await self.rows.upsert(
            environment, name, nonce=sealed.nonce, ciphertext=sealed.ciphertext,
            key_id=sealed.key_id, generated=generated,
        )  # fmt: skip
        return SecretInfo(environment, name, moment, generated, sealed.key_id)

    async def get_all(self, environment: str) -> dict[str, str]:
        """Every value of `environment`, decrypted: for `preview-<pr>`, the `preview`
        values overlaid with that preview's own. `local` has none."""
        validate_environment(environment, reading=True)
        if environment == NO_SECRETS:
            return {}
        layers = list(secret_layers(environment))
        found = await self.rows.fetch(layers)
        values: dict[str, str] = {}
        for layer in layers:
            for row in found:
                if row.environment == layer:
                    values[row.name] = self.box.unseal(
                        Sealed(row.nonce, row.ciphertext, row.key_id),
                        project=self.project,
                        environment=row.environment,
                        name=row.name,
                    )
        return dict(sorted(values.items()))

    async def list(self, environment: str | None = None) -> builtins.list[SecretInfo]:
        """Names, environments and times of stored secrets; never values."""
        if environment is not None:
            validate_environment(environment)
        found = await self.rows.list_meta(environment)
        return [_info(row) for row in found]

    async def delete(self, environment: str, name: str) -> bool:
        """Forget a secret; False when it was not set."""
        validate_environment(environment)
        validate_name(name)
        return await self.rows.delete(environment, name)

    async def rotate(
        self, environment: str, name: str, on_rotated: RotatedHook | None = None
    ) -> Rotation:
        """Replace a generated secret with a new generated value.

        `preview-<pr>` and `test` rotate that one value (creating it when missing);
        `preview` rotates it in every preview that has one (and the shared `preview`
        value, if one was set). Production secrets are never generated: they are
        refused. `on_rotated(environment, name)` runs after each replacement (to
        redeploy what uses it); without it, running services keep the old value.
        """
        validate_environment(environment)
        validate_name(name)
        if environment == PRODUCTION:
            raise UsageError(
                "production secrets are never generated, so they cannot be rotated",
                hint=f"set a new value with `branchline secret set {name} --env production` "
                "(it reads the value from stdin or a prompt), then redeploy production",
            )
        scope = scope_of(environment)
        if not self.generates(environment, name):
            raise UsageError(
                f"{name} is not generated in [secrets.{scope}], so branchline cannot make "
                "a new value for it",
                hint=f"set a new value with `branchline secret set {name} --env {environment}`, "
                f'or add "{name}" to `generate` in [secrets.{scope}] of branchline.toml',
            )
        if environment == SHARED_PREVIEW:
            # Every preview's own value, and the shared one if it was set.
            targets = await self.rows.environments_with(name, SHARED_PREVIEW)
        else:
            targets = [environment]
        rotated_at: datetime | None = None
        for target in targets:
            info = await self._store(target, name, generate_value(), generated=True)
            rotated_at = info.updated_at
            if on_rotated is not None:
                await on_rotated(target, name)
        return Rotation(name, tuple(targets), rotated_at)

    # -- previews --------------------------------------------------------------

    async def ensure_generated(self, pr: int) -> builtins.list[str]:
        """Give preview `pr` its own value of every name `[secrets.preview]` generates,
        once: later calls keep the values. A name with a value in the shared `preview`
        scope is not generated (it is not missing). Returns the names created now."""
        return await self.ensure_generated_in(Environment.preview(pr).name)

    async def ensure_generated_in(self, environment: str) -> builtins.list[str]:
        """Generate, once, the values `environment` is declared to generate but lacks:
        `preview-<pr>` (see `ensure_generated`) or `test`. Safe to race: one value is
        kept. Returns the names created now."""
        validate_environment(environment, reading=True)
        if environment in (PRODUCTION, SHARED_PREVIEW, NO_SECRETS):
            return []  # never generated, or generated per preview
        wanted = self.scope(environment).generate
        if not wanted:
            return []
        layers = list(secret_layers(environment))
        present = {row.name for layer in layers for row in await self.rows.list_meta(layer)}
        created = []
        for name in wanted:
            if name in present:
                continue
            sealed = self.box.seal(
                generate_value(), project=self.project, environment=environment, name=name
            )
            stored = await self.rows.insert_if_absent(
                environment, name, nonce=sealed.nonce, ciphertext=sealed.ciphertext,
                key_id=sealed.key_id, generated=True,
            )  # fmt: skip
            if stored:
                created.append(name)
        return created

    async def drop_preview(self, pr: int) -> builtins.list[str]:
        """Forget every value of preview `pr`; returns the names deleted."""
        environment = Environment.preview(pr).name
        return await self.rows.delete_environment(environment)

    async def missing(self, environment: str) -> builtins.list[str]:
        """Names the config declares for `environment` that have no value there (for
        `preview`, names generated per preview are not counted)."""
        validate_environment(environment, reading=True)
        if environment == NO_SECRETS:
            return []
        scope = self.scope(environment)
        layers = list(secret_layers(environment))
        present = {row.name for layer in layers for row in await self.rows.list_meta(layer)}
        skip = set(scope.generate) if environment == SHARED_PREVIEW else set()
        return [name for name in scope.names if name not in present and name not in skip]

    @classmethod
    def for_project(
        cls, store: Store, config: Config, env: Mapping[str, str] | None = None
    ) -> Secrets:
        """The project's secrets, with the key from `BRANCHLINE_SECRET_KEY` or the state
        directory's key file."""
        state_dir = store.location.state_dir
        return cls(store, config.project.name, config.secrets, lambda: load_key(state_dir, env))


class ValueSealer:
    """Seals values that are not secrets but must not sit in the state database in
    plain text (a branch's DATABASE_URL published for the next job), with the
    project's key: `sealed:<key id>:<nonce>:<ciphertext>` (base64)."""

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    def seal(self, value: str, label: str) -> str:
        sealed = self.secrets.box.seal(
            value, project=self.secrets.project, environment=_SEALED_SCOPE, name=label
        )
        nonce = base64.b64encode(sealed.nonce).decode()
        text = base64.b64encode(sealed.ciphertext).decode()
        return f"{SEALED_PREFIX}{sealed.key_id}:{nonce}:{text}"

    def unseal(self, value: str, label: str) -> str:
        try:
            key, nonce, text = value.removeprefix(SEALED_PREFIX).split(":")
            sealed = Sealed(base64.b64decode(nonce), base64.b64decode(text), key)
        except ValueError:
            raise SecretError(f"the sealed value of {label} is damaged") from None
        return self.secrets.box.unseal(
            sealed, project=self.secrets.project, environment=_SEALED_SCOPE, name=label
        )


_SEALED_SCOPE = "sealed-value"  # not an environment: binds a sealed value to its use
