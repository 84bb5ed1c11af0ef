"""What the fake GitHub keeps about deployment environments and their secrets: an
environment is made by a PUT or by the first deployment to it (as on GitHub); a secret
is stored as sent (sealed with the repository's public key, which the fake hands out
but cannot open) and never shown again, only its name and times."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from branchline.fakes.github.records import ApiError, invalid, not_found
from branchline.fakes.github.shapes import now


@dataclass
class Environment:
    id: int
    name: str
    created: datetime
    updated: datetime


@dataclass
class Secret:
    name: str
    encrypted_value: str
    key_id: str
    created: datetime
    updated: datetime


class Environments:
    """One repository's environments and environment secrets; ids from `next_id`."""

    def __init__(self, next_id: Callable[[], int]) -> None:
        self._next_id = next_id
        self.environments: dict[str, Environment] = {}
        self.secrets: dict[tuple[str, str], Secret] = {}
        # A Curve25519 key as GitHub's (libsodium sealed boxes); its id an opaque number.
        public = X25519PrivateKey.generate().public_key()
        self.public_key = base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.key_id = str(self._next_id() * 1_000_003)

    def environment(self, name: str) -> Environment:
        found = self.environments.get(name.lower())  # names are case-insensitive
        if found is None:
            raise not_found()
        return found

    def ensure(self, name: str) -> Environment:
        """The environment `name`, made if missing (a PUT, or a first deployment)."""
        found = self.environments.get(name.lower())
        if found is None:
            moment = now()
            found = Environment(self._next_id(), name, moment, moment)
            self.environments[name.lower()] = found
        else:
            found.updated = now()
        return found

    def delete(self, name: str) -> None:
        self.environments.pop(name.lower(), None)
        for key in [k for k in self.secrets if k[0] == name.lower()]:
            del self.secrets[key]

    def secret(self, environment: str, name: str) -> Secret:
        self.environment(environment)
        found = self.secrets.get((environment.lower(), name.upper()))
        if found is None:
            raise not_found()
        return found

    def put_secret(self, environment: str, name: str, encrypted_value: str, key_id: str) -> bool:
        """Store a sealed secret (names are upper-cased, as GitHub does); True when new."""
        self.environment(environment)
        if key_id != self.key_id:
            raise invalid("Secret", "key_id", message="the key_id is not the current key's")
        try:
            sealed = base64.b64decode(encrypted_value, validate=True)
        except binascii.Error:
            raise invalid("Secret", "encrypted_value") from None
        if len(sealed) < 48:  # a sealed box is a 32-byte key and a 16-byte tag at least
            raise ApiError(422, "Bad request: the value is not a sealed box")
        key = (environment.lower(), name.upper())
        moment = now()
        old = self.secrets.get(key)
        created = old.created if old else moment
        self.secrets[key] = Secret(name.upper(), encrypted_value, key_id, created, moment)
        return old is None

    def delete_secret(self, environment: str, name: str) -> None:
        self.environment(environment)
        self.secrets.pop((environment.lower(), name.upper()), None)
