"""The precision policy, decided once per run and written into every ranking and run record: the dtype the
weights are stored in, the dtype matmuls run in (bf16 autocast over fp32 weights is the CUDA default, as TRL's
GRPOConfig(bf16=True)), and the dtype of whatever is perturbed or trained (fp32 master copies). A bf16 weight
cannot hold a 1e-5 Adam step on an entry of size 0.02 (its spacing there is 1.2e-4), so probe steps and RL
updates are applied to fp32 copies. Cost: none beyond the master copies the policy names.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Precision:
    """weights: storage dtype of the loaded weights; compute: matmul dtype (autocast when it differs from
    weights); master: dtype of probe steps and trained parameters; device_type: "cpu" | "cuda"."""

    weights: str = "float32"
    compute: str = "float32"
    master: str = "float32"
    device_type: str = "cpu"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES[self.compute] if self.compute != self.weights else None

    def autocast(self, cache: bool = True):
        """torch.autocast to `compute` when it differs from the weights, else a no-op context. `cache`: keep the
        cast of each weight that requires grad until the context exits (torch's default; a sampling loop reuses
        them); off, a pass whose weights require grad holds no copy of them beyond what autograd saves."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device_type, dtype=dtype, cache_enabled=cache) if dtype is not None \
            else nullcontext()

    def as_record(self) -> dict[str, str]:
        """e.g. {"weights": "float32", "compute": "bfloat16 autocast", "master": "float32"}."""
        compute = f"{self.compute} autocast" if self.autocast_dtype is not None else self.compute
        return {"weights": self.weights, "compute": compute, "master": self.master, "device": self.device_type}


def model_precision(model: torch.nn.Module, dtype: str = "auto") -> Precision:
    """The policy for `model` as loaded. `dtype` is what was asked for: "auto" adds bf16 autocast over fp32
    weights on a CUDA device that supports bf16; an explicit dtype computes in the weights' own dtype.

    >>> model_precision(torch.nn.Linear(2, 2)).as_record()
    {'weights': 'float32', 'compute': 'float32', 'master': 'float32', 'device': 'cpu'}
    """
    p = next(p for p in model.parameters() if p.is_floating_point())
    weights, device_type = dtype_name(p.dtype), p.device.type
    compute = weights
    if dtype == "auto" and device_type == "cuda" and weights == "float32" and torch.cuda.is_bf16_supported():
        compute = "bfloat16"
    return Precision(weights=weights, compute=compute, master="float32", device_type=device_type)


FP32 = Precision()


@contextmanager
def fp32_compute(model: torch.nn.Module):
    """Parameters stored below fp32 are upcast for the duration (exactly restored after: bf16 -> fp32 -> bf16 is
    lossless); use with `FP32`, whose autocast is off. For forwards that must resolve effects near bf16's
    resolution, e.g. the lookahead's 1e-4 step. Memory: an fp32 copy of those parameters while active."""
    low = [(p, p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32]
    with torch.no_grad():
        for p, _ in low:
            p.data = p.data.float()
    try:
        yield FP32
    finally:
        with torch.no_grad():
            for p, dtype in low:
                p.data = p.data.to(dtype)


def upcast_trainable(model: torch.nn.Module, autocast: bool) -> None:
    """fp32 master copies for RL training: parameters that require grad and are stored below fp32 are upcast in
    place; frozen ones keep their dtype. A mixed-dtype model only runs under autocast, so without it, refuse."""
    low = [p for p in model.parameters() if p.requires_grad and p.dtype != torch.float32]
    if not low:
        return
    if not autocast:
        from .errors import LayerscoutError

        raise LayerscoutError(
            f"the trained weights are {dtype_name(low[0].dtype)}, which cannot hold small RL updates, and fp32 "
            f"master copies need autocast, which TRL runs only on CUDA (bf16=True): load the model in float32 "
            f"(--dtype auto, the default)")
    with torch.no_grad():
        for p in low:
            p.data = p.data.float()


def training_precision(model: torch.nn.Module, bf16: bool, fp16: bool) -> dict[str, str]:
    """The record of an RL run's policy, read off the model and TRL's mixed-precision flags, e.g.
    {"weights": "bfloat16", "trained": "float32", "compute": "bfloat16 autocast", "master": "float32"}."""
    frozen = sorted({dtype_name(p.dtype) for p in model.parameters() if not p.requires_grad})
    trained = sorted({dtype_name(p.dtype) for p in model.parameters() if p.requires_grad})
    weights = "/".join(frozen or trained)
    compute = "bfloat16 autocast" if bf16 else "float16 autocast" if fp16 else weights
    return {"weights": weights, "trained": "/".join(trained), "compute": compute, "master": "float32"}


def autocast_for(model: torch.nn.Module):
    """Autocast to the model's lowest float dtype when its parameters mix dtypes (fp32 trained blocks in a bf16
    model, after upcast_trainable), so forwards outside the trainer (evaluation) run; else a no-op context."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) < 2:
        return nullcontext()
    low = min(dtypes, key=lambda d: torch.finfo(d).bits)
    return torch.autocast(next(model.parameters()).device.type, dtype=low)
