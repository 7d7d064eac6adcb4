"""What RunPod offers now, read from its own catalog: the authority on GPU pools, type ids
and data centers, which change from month to month.

REST v2 serves it (``runpod/docs`` ``api-reference-v2/openapi.json`` at fed16bc):
``GET /v2/catalog/gpus`` (each GPU type with its serverless ``pool``) and
``GET /v2/catalog/datacenters`` (each data center with the ``networkVolumeTypes`` it
offers). An id the catalog lacks is passed on with a warning, never refused here: the API
that creates the endpoint, pod or volume has the last word (a 400 naming the field). An
unreachable catalog checks nothing. Each list is read at most once per command, and only
when a setting names something our own tables do not know.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ondemand.errors import OndemandError

log = logging.getLogger("ondemand.providers.runpod")

Fetch = Callable[[str, str], Any]


class Catalog:
    """RunPod's catalog through ``fetch(what, path)`` (``RunpodApi.get``), read lazily."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._lists: dict[str, list[dict[str, Any]] | None] = {}

    def _list(self, path: str, key: str) -> list[dict[str, Any]] | None:
        if path not in self._lists:
            try:
                body = self._fetch("read RunPod's catalog", path)
            except OndemandError as exc:
                log.info("RunPod's catalog (%s) could not be read: %s", path, exc.message)
                self._lists[path] = None
            else:
                items = body.get(key) if isinstance(body, dict) else None
                self._lists[path] = [i for i in items or [] if isinstance(i, dict)] or None
        return self._lists[path]

    def gpus(self) -> list[dict[str, Any]] | None:
        return self._list("/v2/catalog/gpus", "gpus")

    def data_centers(self) -> list[dict[str, Any]] | None:
        return self._list("/v2/catalog/datacenters", "dataCenters")

    def pool_of(self, gpu: str) -> str | None:
        """The serverless pool of a GPU type, by its id or its short name ("L4")."""
        wanted = gpu.strip().casefold()
        for item in self.gpus() or []:
            names = {str(item.get("id") or "").casefold(), str(item.get("name") or "").casefold()}
            if wanted in names and item.get("pool"):
                return str(item["pool"])
        return None

    def type_id(self, gpu: str) -> str | None:
        wanted = gpu.strip().casefold()
        for item in self.gpus() or []:
            if wanted in (str(item.get("id") or "").casefold(),
                          str(item.get("name") or "").casefold()):  # fmt: skip
                return str(item.get("id"))
        return None

    def check(self, kind: str, ids: list[str], known: Callable[[], set[str] | None]) -> None:
        """Warn about ids the catalog lacks; they are sent all the same."""
        listed = known()
        if listed is None:
            return
        for unknown in (i for i in ids if i not in listed):
            log.warning(
                "RunPod's catalog lists no %s %r; sending it anyway (RunPod refuses it if it "
                "does not exist). Known now: %s",
                kind, unknown, ", ".join(sorted(listed)),
            )  # fmt: skip

    def pools(self) -> set[str] | None:
        gpus = self.gpus()
        return None if gpus is None else {str(g["pool"]) for g in gpus if g.get("pool")}

    def type_ids(self) -> set[str] | None:
        gpus = self.gpus()
        return None if gpus is None else {str(g["id"]) for g in gpus if g.get("id")}

    def data_center_ids(self, *, volumes: bool = False) -> set[str] | None:
        centers = self.data_centers()
        if centers is None:
            return None
        return {
            str(dc["id"])
            for dc in centers
            if dc.get("id") and (not volumes or dc.get("networkVolumeTypes"))
        }
