"""Model FLOPs utilization: achieved model FLOP/s over the device's peak.

Model FLOPs per token come from `phi_lib.model.planning.flops_per_token` (6N plus attention,
the PaLM appendix-B convention, no recompute). Peak: the datasheet's dense bf16/fp16 rate of
known GPUs, or on CPU a measured fp32 matmul rate (CPUs publish no comparable figure, so CPU
MFU reads "share of what this machine's matmul reaches").
"""
from __future__ import annotations

import time
from functools import lru_cache
from typing import Optional

import torch

# Dense (no sparsity) TFLOP/s per GPU at bf16/fp16, and at fp32 (TF32 tensor cores).
GPU_PEAK_TFLOPS = {
    "H200": (989.0, 494.5), "H100": (989.0, 494.5), "A100": (312.0, 156.0),
    "A10G": (125.0, 62.5), "L40S": (362.0, 183.0), "L4": (121.0, 60.0), "V100": (125.0, 15.7),
}


def device_kind(device: torch.device) -> str:
    """What an MFU was measured on: `cpu`, a GPU_PEAK_TFLOPS key (`H100`, `A100` ...) or the
    GPU's own name. A measured MFU transfers only to the same kind (phi_lib.train.planner)."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    return next((key for key in GPU_PEAK_TFLOPS if key in name.upper()), name)


def gpu_peak_tflops(name: str, precision: str) -> Optional[float]:
    """Datasheet peak of a GPU named like `torch.cuda.get_device_name()` (None if unknown)."""
    for key, (half, fp32) in GPU_PEAK_TFLOPS.items():
        if key in name.upper():
            return fp32 if precision == "fp32" else half
    return None


@lru_cache(maxsize=None)
def measured_cpu_tflops(n: int = 1024, seconds: float = 0.5) -> float:
    """fp32 matmul TFLOP/s this process reaches on the CPU (its threads, now)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_tflops(device: torch.device, precision: str, configured: Optional[float] = None) -> float:
    """Peak TFLOP/s of one device: the configured value, the GPU datasheet, or measured (CPU)."""
    if configured:
        return configured
    if device.type == "cuda":
        peak = gpu_peak_tflops(torch.cuda.get_device_name(device), precision)
        if peak is not None:
            return peak
        raise ValueError(f"unknown GPU {torch.cuda.get_device_name(device)!r}: set "
                         "train.peak_tflops to its dense peak for MFU")
    return measured_cpu_tflops()


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops_per_device: float,
        n_devices: int) -> float:
    """Achieved model FLOP/s over the peak of all devices."""
    return tokens_per_s * flops_per_token / (peak_tflops_per_device * 1e12 * n_devices)
