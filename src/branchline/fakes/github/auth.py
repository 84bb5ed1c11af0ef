"""Who a call to the fake GitHub is: the configured personal token, a live installation
token, or (on the App's own paths) a GitHub App JWT checked as GitHub checks it: RS256,
`iss` the app id, `iat` and `exp` within ten minutes, signed by the app's key."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from branchline.fakes.github.records import Actor, ApiError
from branchline.fakes.github.shapes import APP_SLUG

JWT_MAX_LIFETIME = 600  # seconds: GitHub refuses an `exp` further than ten minutes on
CLOCK_DRIFT = 60  # seconds of drift GitHub forgives on `iat`


def bad_credentials() -> ApiError:
    return ApiError(401, "Bad credentials")


@dataclass
class InstallationToken:
    token: str
    expires: float  # epoch seconds


class Credentials:
    """The fake's secrets: a personal token (its owner is `login`), an optional App
    (id, public key, one installation) and the installation tokens it has issued."""

    def __init__(
        self,
        token: str,
        *,
        login: str,
        app_id: int | None = None,
        app_key_pem: str | None = None,
        installation_id: int = 1,
        token_lifetime: float = 3600.0,
    ) -> None:
        self._token = token
        self.login = login
        self.app_id = app_id
        self.public_key = _public_key(app_key_pem) if app_key_pem else None
        self.installation_id = installation_id
        self.token_lifetime = token_lifetime
        self.tokens: dict[str, InstallationToken] = {}
        self.issued = 0

    def bot(self) -> Actor:
        return Actor(f"{APP_SLUG}[bot]", bot=True)

    def actor(self, header: str) -> Actor:
        """The caller of a repository path, from `Authorization: token X` or `Bearer X`."""
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() not in ("token", "bearer") or not value:
            raise ApiError(401, "Requires authentication")
        if self._token and hmac.compare_digest(value.encode(), self._token.encode()):
            return Actor(self.login)
        issued = self.tokens.get(value)
        if issued is not None and issued.expires > time.time():
            return self.bot()
        raise bad_credentials()

    def app(self, header: str) -> None:
        """Check a GitHub App JWT (`Authorization: Bearer <JWT>`)."""
        scheme, _, value = header.partition(" ")
        if self.public_key is None or self.app_id is None:
            raise ApiError(401, "A JSON web token could not be decoded")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(
                value.strip(), self.public_key, algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"], "verify_iat": False},
                leeway=CLOCK_DRIFT,
            )  # fmt: skip
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "'Expiration time' claim ('exp') must be a numeric value "
                           "representing the future time at which the assertion expires"
                           ) from exc  # fmt: skip
        except jwt.PyJWTError as exc:
            raise ApiError(401, "A JSON web token could not be decoded") from exc
        moment = time.time()
        if str(claims["iss"]) != str(self.app_id):
            raise ApiError(401, "'Issuer' claim ('iss') must be an Integer")
        if float(claims["iat"]) > moment + CLOCK_DRIFT:
            raise ApiError(401, "'Issued at' claim ('iat') must be an Integer representing "
                           "the time that the assertion was issued")  # fmt: skip
        if float(claims["exp"]) > moment + JWT_MAX_LIFETIME + CLOCK_DRIFT or (
            float(claims["exp"]) - float(claims["iat"]) > JWT_MAX_LIFETIME
        ):
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future")

    def issue_token(self, installation_id: int) -> InstallationToken:
        if installation_id != self.installation_id:
            raise ApiError(404, "Not Found")
        self.issued += 1
        token = InstallationToken("ghs_" + secrets.token_urlsafe(27)[:36],
                                  time.time() + self.token_lifetime)  # fmt: skip
        self.tokens = {k: v for k, v in self.tokens.items() if v.expires > time.time()}
        self.tokens[token.token] = token
        return token


def _public_key(pem: str) -> RSAPublicKey:
    """The app's public key from its PEM: a public key, or the private key's half."""
    data = pem.encode()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, RSAPrivateKey):
            raise ValueError("a GitHub App's key is an RSA key")
        return private.public_key()
    public = serialization.load_pem_public_key(data)
    if not isinstance(public, RSAPublicKey):
        raise ValueError("a GitHub App's key is an RSA key")
    return public
