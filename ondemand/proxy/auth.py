"""API keys: where they come from, and checking a request's credentials in constant time.

Keys are kept only as SHA-256 digests. A presented key is hashed once and compared with
every known digest using ``hmac.compare_digest`` without stopping at the first match, so the
time taken does not depend on which key (if any) matched or how much of it was right.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ondemand.envvalues import Env, secret_problem
from ondemand.errors import ConfigError
from ondemand.proxy.runkeys import RunKeyClaim

# Longer values are refused before hashing: no real key is this long, and it bounds the work
# an anonymous client can make the proxy do.
MAX_CREDENTIAL_BYTES = 4096
_SHA256_HEX = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def digest(key: str | bytes) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def sha256_form(key: str) -> str:
    """The ``sha256:<hex>`` form of a key, safe to store in a keys file."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    name: str
    digest: bytes = field(repr=False)
    admin: bool = False
    models: frozenset[str] | None = None  # None: every model
    max_concurrency: int | None = None
    rpm: int | None = None
    source: str = ""
    # A per-run key's: the lease that must still live for the key to work.
    claim: RunKeyClaim | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is; never holds the key itself."""

    name: str
    admin: bool
    entry: KeyEntry | None = None


ANONYMOUS_ADMIN = Identity(name="anonymous", admin=True)
# Keys that are checked, not looked up: the per-run keys of leases (signed, see runkeys.py).
SignedKeys = Callable[[bytes], KeyEntry | None]


class AuthFailure(Exception):
    """The request carries no usable credentials, or credentials nobody issued."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _BasicUser:
    user_digest: bytes = field(repr=False)
    password_digest: bytes = field(repr=False)
    name: str


class KeyStore:
    """The accepted credentials, built once from the environment at start-up."""

    def __init__(
        self,
        entries: list[KeyEntry],
        basic_users: list[_BasicUser] | None = None,
        *,
        insecure_no_auth: bool = False,
    ) -> None:
        self.entries = tuple(entries)
        self._basic = tuple(basic_users or ())
        self.insecure_no_auth = insecure_no_auth

    @property
    def empty(self) -> bool:
        return not self.entries and not self._basic

    def names(self) -> list[str]:
        return [e.name for e in self.entries] + [b.name for b in self._basic]

    def authenticate(
        self, headers: list[tuple[bytes, bytes]], signed: SignedKeys | None = None
    ) -> Identity:
        """Return the caller's identity or raise ``AuthFailure``. ``signed`` checks keys
        that come and go at run time (the per-run keys of live leases).

        ``X-API-Key`` wins over ``Authorization`` because on RunPod's load balancer the
        gateway owns ``Authorization`` (it carries the RunPod key, not ours).
        """
        if self.insecure_no_auth:
            return ANONYMOUS_ADMIN
        authorization: bytes | None = None
        api_key: bytes | None = None
        for name, value in headers:
            if name == b"x-api-key" and api_key is None:
                api_key = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        if api_key is not None:
            return self._match_key(api_key.strip(), signed)
        if authorization is None:
            raise AuthFailure("missing")
        if len(authorization) > MAX_CREDENTIAL_BYTES:
            raise AuthFailure("malformed")
        scheme, _, credentials = authorization.strip().partition(b" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        if scheme == b"bearer":
            return self._match_key(credentials, signed)
        if scheme == b"basic":
            return self._match_basic(credentials, signed)
        raise AuthFailure("malformed")

    def _match_key(self, key: bytes, signed: SignedKeys | None) -> Identity:
        if not key or len(key) > MAX_CREDENTIAL_BYTES or b" " in key:
            raise AuthFailure("malformed")
        presented = digest(key)
        found: KeyEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.digest) and found is None:
                found = entry
        if found is None and signed is not None:
            found = signed(key)
        if found is None:
            raise AuthFailure("invalid")
        return Identity(found.name, found.admin, found)

    def _match_basic(self, credentials: bytes, signed: SignedKeys | None) -> Identity:
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuthFailure("malformed") from exc
        user, sep, password = decoded.partition(b":")
        if not sep:
            raise AuthFailure("malformed")
        user_d, password_d = digest(user), digest(password)
        found: _BasicUser | None = None
        for basic in self._basic:
            same_user = hmac.compare_digest(user_d, basic.user_digest)
            same_password = hmac.compare_digest(password_d, basic.password_digest)
            if same_user and same_password and found is None:
                found = basic
        if found is not None:
            return Identity(found.name, admin=False)
        # Tools that only speak Basic send the API key as the password.
        return self._match_key(password, signed)


# Every variable that holds a key or a password. One set but blank, or with whitespace
# around it, stops the server: ONDEMAND_ADMIN_KEY=$'\n' must never make "\n" an admin.
SECRET_VARS = ("ONDEMAND_ADMIN_KEY", "ONDEMAND_BASIC_AUTH", "OVHAI_BASIC_AUTH_USER",
               "OVHAI_BASIC_AUTH_PASSWORD", "ONDEMAND_RUN_KEY_SECRET",
               "USER_MODEL_METRICS_WEBHOOK_API_KEY")  # fmt: skip


def _is_api_key_var(name: str) -> bool:
    return name == "AUTHORIZATION_APIKEY" or name.startswith("AUTHORIZATION_APIKEY_")


def check_secret_vars(env: Mapping[str, str]) -> None:
    """Refuse a key variable that is set but blank, or has whitespace around it (the
    message names the variable, never the value). An empty variable is an unset one."""
    read = Env(env)
    for name in sorted(n for n in env if _is_api_key_var(n)) + list(SECRET_VARS):
        read.secret(name)


def _env_keys(env: Mapping[str, str]) -> list[KeyEntry]:
    entries: list[KeyEntry] = []
    read = Env(env)
    for var in sorted(filter(_is_api_key_var, env)):
        value = read.secret(var)
        if value is not None:  # an empty variable never becomes an accepted empty key
            name = var.removeprefix("AUTHORIZATION_").lower()
            entries.append(KeyEntry(name, digest(value), source=f"env {var}"))
    admin = read.secret("ONDEMAND_ADMIN_KEY")
    if admin is not None:
        entries.append(
            KeyEntry("admin", digest(admin), admin=True, source="env ONDEMAND_ADMIN_KEY")
        )
    return entries


def _basic_users(env: Mapping[str, str]) -> list[_BasicUser]:
    users: list[_BasicUser] = []
    read = Env(env)
    pair = read.secret("ONDEMAND_BASIC_AUTH")
    if pair is not None:
        user, sep, password = pair.partition(":")
        if not sep or secret_problem(user) or secret_problem(password):
            raise ConfigError(
                "ONDEMAND_BASIC_AUTH must be 'user:password', neither blank nor with "
                "whitespace around it",
                hint="set it as user:password, or unset it",
            )
        users.append(_BasicUser(digest(user), digest(password), user))
    ovh_user = read.secret("OVHAI_BASIC_AUTH_USER")
    ovh_password = read.secret("OVHAI_BASIC_AUTH_PASSWORD")
    if ovh_user or ovh_password:
        if not (ovh_user and ovh_password):
            raise ConfigError(
                "OVHAI_BASIC_AUTH_USER and OVHAI_BASIC_AUTH_PASSWORD must be set together",
                hint="set both, or neither",
            )
        users.append(_BasicUser(digest(ovh_user), digest(ovh_password), ovh_user))
    return users


def keystore_from_env(env: Mapping[str, str]) -> KeyStore:
    """Build the key store; fail closed when nothing is configured, or when a key variable
    is blank or has whitespace around it."""
    check_secret_vars(env)
    entries = _env_keys(env)
    keys_file = env.get("ONDEMAND_KEYS_FILE", "")
    if keys_file:
        from ondemand.proxy.keysfile import parse_keys_file

        entries.extend(parse_keys_file(Path(keys_file)))
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.name in seen:
            raise ConfigError(
                f"two keys are named {entry.name!r} ({seen[entry.name]} and {entry.source})",
                cause="key names identify callers in logs and metrics, so they must be unique",
                hint="rename one of them",
            )
        seen[entry.name] = entry.source
    basic = _basic_users(env)
    insecure = Env(env).flag("ONDEMAND_INSECURE_NO_AUTH")
    store = KeyStore(entries, basic, insecure_no_auth=insecure)
    if store.empty and not insecure:
        raise ConfigError(
            "no API key is configured, so the proxy refuses to start",
            cause="none of AUTHORIZATION_APIKEY, AUTHORIZATION_APIKEY_*, ONDEMAND_ADMIN_KEY, "
            "ONDEMAND_KEYS_FILE or ONDEMAND_BASIC_AUTH is set",
            hint="mint one with 'ondemand keys new' and set AUTHORIZATION_APIKEY, "
            "or set ONDEMAND_INSECURE_NO_AUTH=1 to serve without authentication",
        )
    return store


def valid_key_name(name: str) -> bool:
    return bool(_NAME.match(name))


def parse_sha256(value: str) -> bytes | None:
    match = _SHA256_HEX.match(value.strip())
    return bytes.fromhex(match.group(1)) if match else None
