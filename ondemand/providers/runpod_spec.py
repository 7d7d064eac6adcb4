"""What RunPod calls GPUs and volumes, and how ``gpu: L4`` in the config becomes them.

RunPod names GPUs twice: serverless endpoints take *pools* (``AMPERE_24``), pods take *type
ids* (``NVIDIA L4``), and a pool mixes several types. The tables below follow the
reference's §6 and translate the names users write; membership drifts, so a name they do
not know is looked up in RunPod's own catalog (``runpod_catalog``), and a pool or type id
written out in full is passed through with a warning, never refused: RunPod decides. Data
centers are not listed here at all: the catalog is their only authority.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ondemand.errors import ConfigError

if TYPE_CHECKING:
    from ondemand.providers.runpod_catalog import Catalog

log = logging.getLogger("ondemand.providers.runpod")


@dataclass(frozen=True, slots=True)
class GpuType:
    id: str  # RunPod's type id
    pool: str  # the serverless pool it belongs to
    memory_gb: int
    sm: int  # CUDA compute capability, e.g. 86 for sm_86


GPU_TYPES: tuple[GpuType, ...] = (
    GpuType("NVIDIA RTX A4000", "AMPERE_16", 16, 86),
    GpuType("NVIDIA RTX A4500", "AMPERE_16", 20, 86),
    GpuType("NVIDIA RTX 4000 Ada Generation", "AMPERE_16", 20, 89),
    GpuType("NVIDIA RTX 2000 Ada Generation", "AMPERE_16", 16, 89),
    GpuType("NVIDIA L4", "AMPERE_24", 24, 89),
    GpuType("NVIDIA RTX A5000", "AMPERE_24", 24, 86),
    GpuType("NVIDIA GeForce RTX 3090", "AMPERE_24", 24, 86),
    GpuType("NVIDIA GeForce RTX 4090", "ADA_24", 24, 89),
    GpuType("NVIDIA GeForce RTX 5090", "ADA_32_PRO", 32, 120),
    GpuType("NVIDIA RTX A6000", "AMPERE_48", 48, 86),
    GpuType("NVIDIA A40", "AMPERE_48", 48, 86),
    GpuType("NVIDIA L40", "ADA_48_PRO", 48, 89),
    GpuType("NVIDIA L40S", "ADA_48_PRO", 48, 89),
    GpuType("NVIDIA RTX 6000 Ada Generation", "ADA_48_PRO", 48, 89),
    GpuType("NVIDIA A100 80GB PCIe", "AMPERE_80", 80, 80),
    GpuType("NVIDIA A100-SXM4-80GB", "AMPERE_80", 80, 80),
    GpuType("NVIDIA H100 PCIe", "ADA_80_PRO", 80, 90),
    GpuType("NVIDIA H100 80GB HBM3", "ADA_80_PRO", 80, 90),
    GpuType("NVIDIA H100 NVL", "ADA_80_PRO", 94, 90),
    GpuType("NVIDIA RTX PRO 6000 Blackwell Server Edition", "BLACKWELL_96", 96, 120),
    GpuType("NVIDIA H200", "HOPPER_141", 141, 90),
    GpuType("NVIDIA B200", "BLACKWELL_180", 180, 100),
)
POOLS: tuple[str, ...] = tuple(dict.fromkeys(t.pool for t in GPU_TYPES))
# Ollama releases have been seen to run on the CPU on these cards while reporting a GPU
# (the reference's §7): excluded unless the config says otherwise.
CPU_FALLBACK_SM = 86
# Short names users write, where the type id's own words would be ambiguous.
_ALIASES = {
    "A100": "NVIDIA A100 80GB PCIe",
    "A100-80GB": "NVIDIA A100 80GB PCIe",
    "H100": "NVIDIA H100 80GB HBM3",
    "RTX6000ADA": "NVIDIA RTX 6000 Ada Generation",
    "6000ADA": "NVIDIA RTX 6000 Ada Generation",
}


def _key(name: str) -> str:
    words = re.sub(r"\b(NVIDIA|GEFORCE|TESLA)\b", "", name.upper())
    return re.sub(r"[\s_]+", "", words)


# Each type also answers to its name without "RTX" ("A6000", "4090").
_BY_KEY = {k: t for t in GPU_TYPES for k in (_key(t.id), _key(t.id).replace("RTX", ""))}
for _short, _target in _ALIASES.items():
    _BY_KEY[_key(_short)] = next(t for t in GPU_TYPES if t.id == _target)


def gpu_type(name: str) -> GpuType | None:
    """The type a user means by ``L4``, ``RTX 4090``, ``A6000`` or a full type id."""
    key = _key(name)
    return _BY_KEY.get(key) or _BY_KEY.get(key.replace("RTX", ""))


def _unknown_gpu(name: str, what: str) -> ConfigError:
    return ConfigError(
        f"RunPod has no GPU {what} {name!r}",
        hint="use a GPU model (L4, RTX 4090, L40S, A100, H100, ...), a type id such as "
        f"'NVIDIA L4', or a serverless pool: {', '.join(POOLS)}",
    )


_POOL_ID = re.compile(r"[A-Z]+(_[A-Z0-9]+)*_[0-9]+(_[A-Z]+)*")


def serverless_gpus(
    gpu: str,
    pools: list[str] | None,
    exclude: list[str] | None,
    catalog: Catalog | None = None,
) -> tuple[list[str], list[str]]:
    """The ``gpu.pools`` and ``gpu.excludedTypes`` of an endpoint for these settings.
    ``catalog`` (RunPod's own) is asked only about names the tables here do not know."""
    chosen = gpu_type(gpu)
    if pools:
        wanted = [p.strip().upper() for p in pools if p.strip()]
    elif gpu.strip().upper() in POOLS:
        wanted = [gpu.strip().upper()]
    elif chosen is not None:
        wanted = [chosen.pool]
    elif catalog is not None and (pool := catalog.pool_of(gpu)) is not None:
        wanted = [pool]
    elif _POOL_ID.fullmatch(gpu.strip().upper()):
        wanted = [gpu.strip().upper()]  # a pool newer than these tables
    else:
        raise _unknown_gpu(gpu, "model or pool")
    new = [p for p in wanted if p not in POOLS]
    if new and catalog is not None:
        catalog.check("serverless GPU pool", new, catalog.pools)
    if exclude is not None:
        given = [e.strip() for e in exclude if e.strip() and e.strip().lower() != "none"]
        excluded = []
        for name in given:
            found = gpu_type(name)
            if found is not None:
                excluded.append(found.id)
                continue
            type_id = catalog.type_id(name) if catalog is not None else None
            if type_id is None:
                log.warning("GPU type %r to exclude is not known; sent as written", name)
            excluded.append(type_id or name)
        return wanted, excluded
    in_pools = [t for t in GPU_TYPES if t.pool in wanted]
    excluded = [t.id for t in in_pools if t.sm == CPU_FALLBACK_SM and t != chosen]
    if len(excluded) == len(in_pools):
        # Every card in these pools is sm_86 (AMPERE_48): excluding them all would leave
        # nothing to run on; the user asked for these pools, so none is excluded.
        excluded = []
    return wanted, excluded


def pod_gpu_type(gpu: str, catalog: Catalog | None = None) -> str:
    """The one type id a pod asks for (pods take a type, not a pool)."""
    if gpu.strip().upper() in POOLS or _POOL_ID.fullmatch(gpu.strip().upper()):
        raise ConfigError(
            f"{gpu!r} is a serverless pool; a pod needs one GPU type",
            hint="set gpu to a model such as L4 or RTX 4090, or a type id such as 'NVIDIA L4'",
        )
    chosen = gpu_type(gpu)
    if chosen is not None:
        return chosen.id
    type_id = catalog.type_id(gpu) if catalog is not None else None
    if type_id is not None:
        return type_id
    if " " in gpu.strip():
        # Written out like a type id ("NVIDIA GeForce RTX 5080"): RunPod decides.
        log.warning("GPU type %r is not known here; sent as written", gpu.strip())
        return gpu.strip()
    raise _unknown_gpu(gpu, "type")


@dataclass(frozen=True, slots=True)
class VolumeRequest:
    name: str
    data_center: str


def parse_network_volume(text: str) -> VolumeRequest:
    """``NAME@DATACENTER``: the network volume to use, created there if it does not exist."""
    name, sep, data_center = text.strip().rpartition("@")
    data_center = data_center.strip().upper()
    if not sep or not name.strip():
        raise ConfigError(
            f"network volume {text!r} is not NAME@DATACENTER",
            hint="e.g. runpod.network_volume: ollama-models@EU-RO-1 (a volume is pinned to one "
            "data center, and so are the workers that mount it)",
        )
    # Which data centers exist, and which offer volumes, is the catalog's to say (the
    # provider checks it there); a fixed list here went stale within months.
    return VolumeRequest(name.strip(), data_center)
