"""What the benchmarks say about the hardware: FLOPs counted, the attention kernels a pass takes, and the
share of the device's peak that an achieved rate is (issue 26 item 4)."""

from __future__ import annotations

import os
from typing import Callable

import torch

PEAK_VARIABLE = "GCCTL_PEAK_TFLOPS"
# Dense (no 2:4 sparsity) BF16 tensor-core peaks, TFLOP/s, from NVIDIA's H100 and H200 datasheets; the first
# name contained in torch's device name counts. Another GPU: set GCCTL_PEAK_TFLOPS.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0), ("H200", 989.0))


def counted_flops(work: Callable[[], object]) -> float:
    """FLOPs of `work()` as torch's FLOP counter counts them (a multiply-add is 2; backward included when
    `work` runs it)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def attention_kernels(work: Callable[[], object]) -> list[str]:
    """The attention operators `work()` calls (torch's profiler): which of the fused scaled-dot-product kernels
    (flash, memory-efficient, cuDNN) or the unfused path a tower takes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        work()
    return sorted({event.key for event in profiler.key_averages() if event.key.startswith("aten::") and "attention" in event.key})


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense BF16 peak: $GCCTL_PEAK_TFLOPS (on any device), else the table's for a known GPU, else
    None (a CPU, an unknown GPU)."""
    if os.environ.get(PEAK_VARIABLE):
        return float(os.environ[PEAK_VARIABLE])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for known, peak in PEAK_BF16_TFLOPS if known in name), None)


def peak_share(tflops: float, device: torch.device) -> float | None:
    peak = peak_tflops(device)
    return round(tflops / peak, 3) if peak else None
