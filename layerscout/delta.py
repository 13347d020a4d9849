"""Layer deltas: the trained blocks' tensors of a single-layer RL run, by real parameter name, in one
safetensors file whose metadata says which base they apply to. `apply_delta(base, path)` rebuilds the trained
model bit-for-bit, so a run ships a few MB instead of the whole model. NaN or inf is refused on write and on
apply. The base check is a SHA-256 over the base's values of exactly the stored tensors (cost: one pass over
those tensors), plus depth and architecture.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from .errors import LayerscoutError

FORMAT = "layerscout-delta/1"


def fingerprint(tensors: dict[str, Any]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of `tensors` (name -> torch.Tensor), in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _names(model, params: Iterable[int] | Iterable[str]) -> list[str]:
    """Layer indices -> their parameter names; names pass through (checked against the model)."""
    from .models import check_layers, layer_prefix, num_layers

    params = list(params)
    own = dict(model.named_parameters())
    if all(isinstance(p, int) for p in params):
        check_layers(params, num_layers(model))
        prefixes = tuple(layer_prefix(model, k) for k in params)
        return [n for n in own if n.startswith(prefixes)]
    missing = [p for p in params if p not in own]
    if missing:
        raise LayerscoutError(f"the model has no parameter {missing[0]!r}")
    return params


def save_delta(model, params: Iterable[int] | Iterable[str], path: str | Path, *,
               base_state: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write the current values of `params` (layer indices or parameter names) of `model` to `path`.

    `base_state` (name -> tensor before training, same names) records the base fingerprint that
    `apply_delta` checks. `metadata` values that are not strings are stored as JSON. Example:
    `save_delta(model, [3], "out/layer_delta.safetensors", base_state=snap, metadata={"algo": "grpo"})`.
    """
    from safetensors.torch import save_file

    from .models import num_layers

    names = _names(model, params)
    if not names:
        raise LayerscoutError("nothing to save: the delta would hold no tensors")
    own = dict(model.named_parameters())
    tensors = {n: own[n].detach().to("cpu").contiguous() for n in names}
    check_finite(tensors, f"the delta for {path}")
    meta = {"format": FORMAT, "num_layers": num_layers(model),
            "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
            **(metadata or {})}
    if base_state is not None:
        missing = set(names) - set(base_state)
        if missing:
            raise LayerscoutError(f"base_state lacks {sorted(missing)[0]!r}")
        meta["base_fingerprint"] = fingerprint({n: base_state[n] for n in names})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    return path


def check_finite(tensors: dict[str, Any], what: str) -> None:
    """A trained tensor holding NaN or inf is a diverged run, never something to save or apply."""
    import torch

    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise LayerscoutError(f"{what} holds non-finite values (NaN or inf) in {bad[0]}"
                              + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""))


def read_delta(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors by parameter name, metadata with JSON values decoded)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LayerscoutError(f"no such delta file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise LayerscoutError(f"{path}: not a safetensors file ({e})") from None
    if raw.get("format") != FORMAT:
        raise LayerscoutError(f"{path}: not a layerscout delta (format {raw.get('format')!r})")
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


def apply_delta(base_model, delta_path: str | Path, *, check_base: bool = True):
    """Copy a delta's tensors into `base_model` in place and return it.

    Raises LayerscoutError when the delta holds NaN or inf, when the base's depth, architecture, parameter names
    or shapes differ, or (with `check_base`) when the base's values of those tensors are not the ones the run
    started from.
    """
    import torch

    from .models import num_layers

    tensors, meta = read_delta(delta_path)
    check_finite(tensors, f"delta {delta_path}")
    depth, arch = num_layers(base_model), (getattr(base_model.config, "architectures", None) or [None])[0]
    if meta.get("num_layers") != depth:
        raise LayerscoutError(f"delta {delta_path} was trained on a {meta.get('num_layers')}-layer model "
                              f"({meta.get('base_model')}); this base has {depth} layers")
    if arch and meta.get("architecture") and meta["architecture"] != arch:
        raise LayerscoutError(f"delta {delta_path} is for {meta['architecture']}; this base is {arch}")
    own = dict(base_model.named_parameters())
    for name, t in tensors.items():
        if name not in own:
            raise LayerscoutError(f"delta {delta_path} names {name!r}, which this base model lacks")
        if own[name].shape != t.shape:
            raise LayerscoutError(f"delta {delta_path}: {name} has shape {tuple(t.shape)}, "
                                  f"the base {tuple(own[name].shape)}")
    if check_base and "base_fingerprint" in meta:
        if fingerprint({n: own[n] for n in tensors}) != meta["base_fingerprint"]:
            dtypes = sorted({str(t.dtype) for t in tensors.values()})
            raise LayerscoutError(
                f"delta {delta_path} was trained from different base weights than this model "
                f"(recorded base: {meta.get('base_model')}, dtype {', '.join(dtypes)}); load that base "
                "in the same dtype")
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t.to(own[name].device, own[name].dtype))
    return base_model
