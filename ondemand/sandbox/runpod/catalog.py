"""What the emulated RunPod has to offer: GPU types, serverless pools and data centers.

The type ids, VRAM and pool membership follow the reference's §6, the data center ids its
§5. Prices, availability and which data centers hold network volumes are the sandbox's
choices (the reference gives none): a realistic subset supports volumes, so a client meets
the "not every data center supports network volumes" refusal here before production.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STANDARD, HIGH_PERFORMANCE = "STANDARD", "HIGH_PERFORMANCE"


@dataclass(frozen=True, slots=True)
class Gpu:
    id: str
    name: str
    pool: str | None
    memory: int
    secure_price: float
    community_price: float

    def to_api(self, availability: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "pool": self.pool,
            "manufacturer": "NVIDIA",
            "memory": self.memory,
            "secure": True,
            "community": self.community_price > 0,
            "price": {"secure": self.secure_price, "community": self.community_price},
            "maxCount": {"secure": 8, "community": 4 if self.community_price > 0 else 0},
        }
        if availability:
            out["availability"] = "HIGH"
            out["dataCenters"] = [
                {"id": dc.id, "name": dc.name, "availability": "HIGH"} for dc in DATA_CENTERS[:4]
            ]
        return out


@dataclass(frozen=True, slots=True)
class DataCenter:
    id: str
    name: str
    region: str
    volume_types: tuple[str, ...] = ()
    global_network: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "globalNetwork": self.global_network,
            "networkVolumeTypes": list(self.volume_types),
            "compliance": ["GDPR"] if self.region == "EUROPE" else ["SOC_2_TYPE_2"],
        }


GPUS: dict[str, Gpu] = {
    gpu.id: gpu
    for gpu in (
        Gpu("NVIDIA RTX A4000", "RTX A4000", "AMPERE_16", 16, 0.25, 0.17),
        Gpu("NVIDIA RTX A4500", "RTX A4500", "AMPERE_16", 20, 0.27, 0.19),
        Gpu("NVIDIA RTX 4000 Ada Generation", "RTX 4000 Ada", "AMPERE_16", 20, 0.26, 0.20),
        Gpu("NVIDIA RTX 2000 Ada Generation", "RTX 2000 Ada", "AMPERE_16", 16, 0.24, 0.0),
        Gpu("NVIDIA L4", "L4", "AMPERE_24", 24, 0.43, 0.0),
        Gpu("NVIDIA RTX A5000", "RTX A5000", "AMPERE_24", 24, 0.27, 0.16),
        Gpu("NVIDIA GeForce RTX 3090", "RTX 3090", "AMPERE_24", 24, 0.46, 0.22),
        Gpu("NVIDIA GeForce RTX 4090", "RTX 4090", "ADA_24", 24, 0.69, 0.34),
        Gpu("NVIDIA GeForce RTX 5090", "RTX 5090", "ADA_32_PRO", 32, 0.94, 0.69),
        Gpu("NVIDIA RTX A6000", "RTX A6000", "AMPERE_48", 48, 0.49, 0.33),
        Gpu("NVIDIA A40", "A40", "AMPERE_48", 48, 0.40, 0.0),
        Gpu("NVIDIA L40", "L40", "ADA_48_PRO", 48, 0.99, 0.0),
        Gpu("NVIDIA L40S", "L40S", "ADA_48_PRO", 48, 0.86, 0.79),
        Gpu("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", "ADA_48_PRO", 48, 0.77, 0.74),
        Gpu("NVIDIA A100 80GB PCIe", "A100 PCIe", "AMPERE_80", 80, 1.64, 1.19),
        Gpu("NVIDIA A100-SXM4-80GB", "A100 SXM", "AMPERE_80", 80, 1.74, 1.39),
        Gpu("NVIDIA H100 PCIe", "H100 PCIe", "ADA_80_PRO", 80, 2.39, 1.99),
        Gpu("NVIDIA H100 80GB HBM3", "H100 SXM", "ADA_80_PRO", 80, 2.69, 2.69),
        Gpu("NVIDIA H100 NVL", "H100 NVL", "ADA_80_PRO", 94, 2.79, 2.59),
        Gpu(
            "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            "RTX PRO 6000",
            "BLACKWELL_96",
            96,
            1.84,
            0.0,
        ),
        Gpu("NVIDIA H200", "H200", "HOPPER_141", 141, 3.59, 3.59),
        Gpu("NVIDIA B200", "B200", "BLACKWELL_180", 180, 5.98, 0.0),
        Gpu("Tesla V100-SXM2-16GB", "V100 SXM2", None, 16, 0.0, 0.19),
    )
}
POOLS: dict[str, tuple[str, ...]] = {}
for _gpu in GPUS.values():
    if _gpu.pool is not None:
        POOLS[_gpu.pool] = (*POOLS.get(_gpu.pool, ()), _gpu.id)

_BOTH = (STANDARD, HIGH_PERFORMANCE)
DATA_CENTERS: tuple[DataCenter, ...] = (
    DataCenter("EU-RO-1", "EU Romania 1", "EUROPE", (STANDARD,), True),
    DataCenter("CA-MTL-1", "CA Montreal 1", "NORTH_AMERICA", (STANDARD,), True),
    DataCenter("EU-SE-1", "EU Sweden 1", "EUROPE", (STANDARD,)),
    DataCenter("US-IL-1", "US Illinois 1", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("EUR-IS-1", "EU Iceland 1", "EUROPE", (STANDARD,)),
    DataCenter("EU-CZ-1", "EU Czechia 1", "EUROPE", (STANDARD,), True),
    DataCenter("US-TX-3", "US Texas 3", "NORTH_AMERICA", _BOTH, True),
    DataCenter("EUR-IS-2", "EU Iceland 2", "EUROPE"),
    DataCenter("US-KS-2", "US Kansas 2", "NORTH_AMERICA", _BOTH, True),
    DataCenter("US-GA-2", "US Georgia 2", "NORTH_AMERICA"),
    DataCenter("US-WA-1", "US Washington 1", "NORTH_AMERICA"),
    DataCenter("US-TX-1", "US Texas 1", "NORTH_AMERICA"),
    DataCenter("CA-MTL-3", "CA Montreal 3", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("EU-NL-1", "EU Netherlands 1", "EUROPE", (STANDARD,)),
    DataCenter("US-TX-4", "US Texas 4", "NORTH_AMERICA"),
    DataCenter("US-CA-2", "US California 2", "NORTH_AMERICA", (STANDARD,), True),
    DataCenter("US-NC-1", "US North Carolina 1", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("OC-AU-1", "OC Australia 1", "OCEANIA", (STANDARD,)),
    DataCenter("US-DE-1", "US Delaware 1", "NORTH_AMERICA"),
    DataCenter("EUR-IS-3", "EU Iceland 3", "EUROPE"),
    DataCenter("CA-MTL-2", "CA Montreal 2", "NORTH_AMERICA"),
    DataCenter("AP-JP-1", "AP Japan 1", "ASIA", (STANDARD,)),
    DataCenter("EUR-NO-1", "EU Norway 1", "EUROPE"),
    DataCenter("EU-FR-1", "EU France 1", "EUROPE"),
    DataCenter("US-KS-3", "US Kansas 3", "NORTH_AMERICA"),
    DataCenter("US-GA-1", "US Georgia 1", "NORTH_AMERICA", (STANDARD,)),
    # Data centers with network volumes missing from older lists (runpod/docs
    # storage/s3-api.mdx at fed16bc lists them among those with the S3 API).
    DataCenter("US-MD-1", "US Maryland 1", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("US-MO-1", "US Missouri 1", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("US-MO-2", "US Missouri 2", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("US-NC-2", "US North Carolina 2", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("US-NE-1", "US Nebraska 1", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("US-KS-1", "US Kansas 1", "NORTH_AMERICA", (STANDARD,)),
    DataCenter("US-OR-1", "US Oregon 1", "NORTH_AMERICA", (STANDARD,)),
)
DATA_CENTER_IDS: dict[str, DataCenter] = {dc.id: dc for dc in DATA_CENTERS}
VOLUME_DATA_CENTERS: tuple[str, ...] = tuple(dc.id for dc in DATA_CENTERS if dc.volume_types)
DEFAULT_DATA_CENTER = "US-KS-2"


def listed(values: Iterable[str]) -> str:
    """Valid values for an error message: a client's user learns what would work."""
    return ", ".join(values)
