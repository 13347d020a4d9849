"""Signal registry: name -> a pure function of pass results -> float array (n_layers,). A signal declares the
passes it needs (`needs`, names in passes.PASSES); the probe runs each needed pass once and calls the signal with
those results as keyword arguments. Importing this package registers the built-in passes and signals."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import LayerscoutError


@dataclass(frozen=True)
class Signal:
    name: str
    fn: Callable[..., np.ndarray]
    help: str
    needs: tuple[str, ...] = ()
    higher_is_better: bool = True


SIGNALS: dict[str, Signal] = {}


def register_signal(name: str, help: str, needs: Sequence[str] = (), higher_is_better: bool = True):
    """Decorator: `@register_signal("grad_norm", "...", needs=("grad_sweep",)) def f(grad_sweep): ...`."""
    def deco(fn):
        SIGNALS[name] = Signal(name, fn, help, tuple(needs), higher_is_better)
        return fn
    return deco


def get_signal(name: str) -> Signal:
    if name not in SIGNALS:
        close = difflib.get_close_matches(name, SIGNALS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LayerscoutError(f"Unknown signal {name!r}.{hint} Available: {', '.join(sorted(SIGNALS))}")
    return SIGNALS[name]


def list_signals() -> list[Signal]:
    return [SIGNALS[k] for k in sorted(SIGNALS)]


# registration; order = pass execution order (gradients, then updates that reuse them, then the rest)
from . import gradients, updates, attribution, moments, baselines, grafting  # noqa: E402,F401,I001


# Depth-residualised versions of the position-biased per-block statistics (baselines.depth_residual).
DEPTH_RESIDUALISED = ("grad_norm", "fisher_trace", "grad_snr", "attribution", "taylor_saliency", "natural_grad",
                      "zico", "natural_grad_diag")


def _register_depth_residualised() -> None:
    for name in DEPTH_RESIDUALISED:
        base = SIGNALS[name]
        register_signal(f"{name}_depthres", f"{name} with its log-linear trend in relative depth removed",
                        needs=base.needs)(lambda _fn=base.fn, **results: baselines.depth_residual(_fn(**results)))


_register_depth_residualised()

# What `signals: [all]` computes: every signal but the grafting pair (that one runs its own short RL run). These are
# the features a calibration sweep's ranking records for `layerscout fit`.
ALL_SIGNALS = ("grad_norm", "grad_norm_per_param", "grad_norm_rel", "fisher_trace", "grad_snr", "update_norm",
               "attribution", "own_attribution", "taylor_saliency", "natural_grad", "zico", "natural_grad_diag",
               "lookahead_gain", "depth_prior", "spectral_snr", *(f"{name}_depthres" for name in DEPTH_RESIDUALISED))
