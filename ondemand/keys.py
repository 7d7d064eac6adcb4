"""Minting API keys for the proxy."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from ondemand.errors import UsageError

# A recognisable prefix lets secret scanners and humans tell these keys apart.
KEY_PREFIX = "odk_"
# Changed each time 'up' starts a stopped deployment: goes into the secret that signs the
# per-run keys (ondemand/proxy/runkeys.py), so the keys of one run do not work on the next.
RUN_KEY_EPOCH_ENV = "ONDEMAND_RUN_KEY_EPOCH"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True, slots=True)
class MintedKey:
    name: str
    key: str
    admin: bool
    models: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.key.encode()).hexdigest()

    def keys_file_entry(self) -> str:
        """The YAML entry for ONDEMAND_KEYS_FILE; holds the hash, never the key."""
        lines = [f"- name: {self.name}", f"  sha256: {self.sha256}"]
        if self.models:
            lines.append("  models: [" + ", ".join(self.models) + "]")
        if self.admin:
            lines.append("  admin: true")
        return "\n".join(lines)


def mint(
    name: str | None = None, *, models: tuple[str, ...] = (), admin: bool = False
) -> MintedKey:
    """A new random key with 256 bits of entropy."""
    if name is None:
        name = ("admin-" if admin else "key-") + secrets.token_hex(3)
    if not _NAME.match(name):
        raise UsageError(
            f"invalid key name {name!r}",
            hint="use letters, digits, '_', '.', '@' or '-', starting with a letter or digit",
        )
    cleaned = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
    return MintedKey(name, KEY_PREFIX + secrets.token_urlsafe(32), admin, cleaned)
