"""Per-run keys that every replica can check: signed, not stored.

A lease may come with a per-run key for the job that took it. With several replicas behind
a load balancer that has no stickiness, the job's next request may reach a replica that
never saw the lease (another replica took it, or this one started since). So the key
carries its lease: ``odk_run_<payload>.<signature>``, the payload naming the lease, who
holds it, the models it may use and when it ends (the minting server's clock, Unix
seconds), the signature an HMAC-SHA256 over the payload with a secret all replicas share.

The secret is ``ONDEMAND_RUN_KEY_SECRET`` when set, else derived from
``ONDEMAND_ADMIN_KEY`` (every replica of a deployment has it), else random for this
process alone (one server: its keys die with it, as before). Whether a signed key is still
good is the lease book's to say (``LeaseBook.run_key``): not once its lease was released.

``ONDEMAND_RUN_KEY_EPOCH`` goes into the secret too: ``up`` sets a new one in the
deployment's environment each time it starts a stopped deployment, so the keys of an
earlier run (whose releases the new servers never saw) do not work on the next one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from ondemand.envvalues import Env
from ondemand.keys import RUN_KEY_EPOCH_ENV

PREFIX = "odk_run_"
_PREFIX = PREFIX.encode()
_CONTEXT = b"ollama-ondemand per-run keys v1"
MAX_KEY_BYTES = 2048


@dataclass(frozen=True, slots=True)
class RunKeyClaim:
    """What a genuine per-run key says about itself."""

    lease_id: str
    holder: str
    models: frozenset[str] | None  # None: every model
    expires_at: float


def run_key_secret(env: Mapping[str, str]) -> bytes:
    epoch = env.get(RUN_KEY_EPOCH_ENV, "").strip().encode()
    read = Env(env)
    explicit = read.secret("ONDEMAND_RUN_KEY_SECRET")
    if explicit:
        return hmac.new(explicit.encode(), _CONTEXT + b"/" + epoch, hashlib.sha256).digest()
    admin = read.secret("ONDEMAND_ADMIN_KEY")
    if admin:
        return hmac.new(admin.encode(), _CONTEXT + b"/" + epoch, hashlib.sha256).digest()
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: bytes) -> bytes:
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


class RunKeys:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @property
    def secret(self) -> bytes:
        """For the proxy's own worker processes, which must check the same keys."""
        return self._secret

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def mint(self, claim: RunKeyClaim) -> str:
        body: dict[str, object] = {
            "l": claim.lease_id,
            "h": claim.holder[:64],
            "e": round(claim.expires_at, 3),
        }
        if claim.models is not None:
            body["m"] = sorted(claim.models)
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return f"{PREFIX}{_b64(payload)}.{_b64(self._sign(payload))}"

    def read(self, presented: bytes) -> RunKeyClaim | None:
        """The claim of a key this deployment minted; None for anything else."""
        if not presented.startswith(_PREFIX) or len(presented) > MAX_KEY_BYTES:
            return None
        encoded, dot, signature = presented[len(_PREFIX) :].partition(b".")
        if not dot:
            return None
        try:
            payload, given = _unb64(encoded), _unb64(signature)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._sign(payload)):
            return None
        try:
            body = json.loads(payload)
            models = body.get("m")
            return RunKeyClaim(
                lease_id=str(body["l"]),
                holder=str(body.get("h") or ""),
                models=None if models is None else frozenset(str(m) for m in models),
                expires_at=float(body["e"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # signed by us but not a shape we write: never valid
