"""The flavors the emulated region offers (``GET /v1/capabilities/flavor``) and how an
AppSpec's ``resources`` are filled in from them, as the platform echoes them back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
GBIT = 125_000_000  # bytes per second in one Gbit/s: the API counts bandwidth in bytes/s


@dataclass(frozen=True, slots=True)
class Flavor:
    id: str
    description: str
    cpu: int
    memory_gib: int
    storage_gib: int
    max: int
    gpu_model: str | None = None
    gpu_memory_gib: int | None = None
    default: bool = False

    @property
    def is_gpu(self) -> bool:
        return self.gpu_model is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "type": "gpu" if self.is_gpu else "cpu",
            "default": self.default,
            "max": self.max,
            "resourcesPerUnit": {
                "cpu": self.cpu,
                "memory": self.memory_gib * GIB,
                "ephemeralStorage": self.storage_gib * GIB,
                "publicNetwork": 1500 * GBIT // 1000,
                "privateNetwork": 4000 * GBIT // 1000,
            },
        }
        if self.is_gpu:
            out["gpuInformation"] = {
                "gpuBrand": "NVIDIA",
                "gpuModel": self.gpu_model,
                "gpuMemory": (self.gpu_memory_gib or 0) * GIB,
            }
        return out


FLAVORS: dict[str, Flavor] = {
    f.id: f
    for f in (
        Flavor("ai1-1-cpu", "1 vCPU, 4 GiB of memory", 1, 4, 50, 12),
        Flavor(
            "ai1-1-gpu",
            "NVIDIA Tesla V100S 32 GiB",
            13,
            40,
            650,
            4,
            "Tesla-V100S",
            32,
            default=True,
        ),
        Flavor("l4-1-gpu", "NVIDIA L4 24 GiB", 22, 90, 400, 4, "L4", 24),
        Flavor("l40s-1-gpu", "NVIDIA L40S 48 GiB", 15, 90, 400, 4, "L40S", 48),
        Flavor("a100-1-gpu", "NVIDIA A100 80 GiB", 15, 180, 500, 4, "A100", 80),
        Flavor("h100-1-gpu", "NVIDIA H100 80 GiB", 30, 380, 500, 4, "H100", 80),
    )
}
DEFAULT_GPU_FLAVOR = "ai1-1-gpu"
DEFAULT_CPU_FLAVOR = "ai1-1-cpu"


def filled_resources(flavor: Flavor, units: int) -> dict[str, Any]:
    """``spec.resources`` as the platform reports it: the flavor's resources times units."""
    per_unit = flavor.to_json()["resourcesPerUnit"]
    out: dict[str, Any] = {
        "flavor": flavor.id,
        "cpu": flavor.cpu * units,
        "gpu": units if flavor.is_gpu else 0,
        "memory": per_unit["memory"] * units,
        "ephemeralStorage": per_unit["ephemeralStorage"] * units,
        "publicNetwork": per_unit["publicNetwork"] * units,
        "privateNetwork": per_unit["privateNetwork"] * units,
    }
    if flavor.is_gpu:
        out["gpuBrand"] = "NVIDIA"
        out["gpuModel"] = flavor.gpu_model
        out["gpuMemory"] = (flavor.gpu_memory_gib or 0) * GIB
    return out
