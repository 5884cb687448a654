"""GPU figures of one training process for Prometheus, read at scrape time.

``GpuProbe`` is a prometheus-client collector: torch allocator counters (allocated, reserved,
per-step peak), device memory from NVML (nvidia-ml-py) or cudaMemGetInfo, NVML utilisation,
temperature and power where the driver supports them, and an MFU estimate when the GPU's peak
FLOP/s is known. Nothing here runs on a CPU: ``gpu_probe`` returns None there, so GPU series
are absent, never zero. torch and pynvml are imported inside functions only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from tac2sol.observability import names

log = logging.getLogger(__name__)

# 6 FLOPs per parameter per token: forward + backward (the PaLM MFU convention).
FLOPS_PER_PARAM_TOKEN = 6.0

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class GpuProbe:
    """GPU figures of this rank's device, read at scrape time (a prometheus-client collector).

    torch: allocated, reserved, peak during the last step; NVML (nvidia-ml-py): used, total,
    utilisation, temperature, power, each left out where the driver does not support it.
    Without NVML, used/total come from cudaMemGetInfo. MFU when the GPU's peak FLOP/s is known.
    """

    def __init__(self, labels: tuple[str, str, str], index: int, peak_flops: float | None) -> None:
        self.labels = labels
        self.index = index
        self.peak_flops = peak_flops
        self.parameters = 0
        self.tokens_per_second = 0.0
        self.last_step_peak: float | None = None
        self._nvml = _nvml_handle(index)

    def step_end(self) -> None:
        """Read and reset the allocator's peak: no device synchronisation."""
        import torch

        self.last_step_peak = float(torch.cuda.max_memory_allocated(self.index))
        torch.cuda.reset_peak_memory_stats(self.index)

    def describe(self) -> list[Metric]:
        return []  # values need the device; nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        import torch

        def family(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is None:
                return
            g = GaugeMetricFamily(name, doc, labels=list(names.TRAINER_LABELS))
            g.add_metric(list(self.labels), value)
            yield g

        i = self.index
        yield from family(
            names.GPU_MEMORY_ALLOCATED, "torch: bytes held by tensors.", torch.cuda.memory_allocated(i)
        )
        yield from family(
            names.GPU_MEMORY_RESERVED,
            "torch: bytes held by the caching allocator.",
            torch.cuda.memory_reserved(i),
        )
        yield from family(
            names.GPU_MEMORY_PEAK, "torch: peak allocated bytes during the last step.", self.last_step_peak
        )
        used, total = self._memory()
        yield from family(names.GPU_MEMORY_USED, "Device memory in use by all processes (NVML).", used)
        yield from family(names.GPU_MEMORY_TOTAL, "Device memory in total (NVML).", total)
        if self._nvml is not None:
            yield from family(
                names.GPU_UTILIZATION, "NVML: share of time a kernel ran (0-1).", self._nvml_utilization()
            )
            yield from family(names.GPU_TEMPERATURE, "NVML: GPU temperature.", self._nvml_call("temperature"))
            yield from family(names.GPU_POWER, "NVML: power draw.", self._nvml_call("power"))
        if self.peak_flops and self.parameters and self.tokens_per_second > 0:
            mfu = FLOPS_PER_PARAM_TOKEN * self.parameters * self.tokens_per_second / self.peak_flops
            yield from family(
                names.TRAIN_MFU, "Model FLOPs utilisation estimate: 6*params*tokens/s / peak.", mfu
            )

    def _memory(self) -> tuple[float | None, float | None]:
        if self._nvml is not None:
            import pynvml

            try:
                info = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
                return float(info.used), float(info.total)
            except pynvml.NVMLError:
                pass
        import torch

        free, total = torch.cuda.mem_get_info(self.index)
        return float(total - free), float(total)

    def _nvml_utilization(self) -> float | None:
        import pynvml

        try:
            return float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu) / 100.0
        except pynvml.NVMLError:
            return None

    def _nvml_call(self, what: str) -> float | None:
        import pynvml

        try:
            if what == "temperature":
                return float(pynvml.nvmlDeviceGetTemperature(self._nvml, pynvml.NVML_TEMPERATURE_GPU))
            return float(pynvml.nvmlDeviceGetPowerUsage(self._nvml)) / 1000.0  # milliwatts
        except pynvml.NVMLError:
            return None


def cuda_uuid(index: int) -> str | None:
    """``GPU-<uuid>`` of CUDA device ``index``, as NVML and nvidia-smi name it."""
    import torch

    match = _UUID.search(str(torch.cuda.get_device_properties(index).uuid))
    return f"GPU-{match.group(0)}" if match else None


def _nvml_handle(index: int) -> Any:
    """The NVML handle of CUDA device ``index`` (matched by UUID: CUDA_VISIBLE_DEVICES reorders)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver library, no device: NVML series stay absent
        log.info("NVML unavailable (%s); GPU utilisation, temperature and power are not exported", exc)
        return None
    uuid = cuda_uuid(index)
    try:
        if uuid:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        log.info("NVML has no handle for cuda:%d (%s)", index, exc)
    return None


def count_parameters(model: Any) -> int:
    """All parameters of ``model``, counting 4-bit packed weights (two per byte) and ZeRO-3 shards."""
    total = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", 0) or p.numel())
        if type(p).__name__ == "Params4bit":
            n *= 2
        total += n
    return total


def gpu_probe(labels: tuple[str, str, str], device: str, peak_flops: float | None) -> GpuProbe | None:
    """The probe of ``device`` (``cuda:N``, from ``launch.process_device``); None on a CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device).index
    return GpuProbe(labels, torch.cuda.current_device() if index is None else index, peak_flops)
