"""Signal registry: name -> fn(state) -> float array (n_layers,). `state` is a probe.ProbeState, which
caches the passes several signals share (one gradient pass feeds five of them). Importing this package
registers the built-in signals."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import LayerscoutError


@dataclass(frozen=True)
class Signal:
    name: str
    fn: Callable[..., np.ndarray]
    help: str
    higher_is_better: bool = True


SIGNALS: dict[str, Signal] = {}


def register_signal(name: str, help: str, higher_is_better: bool = True):
    def deco(fn):
        SIGNALS[name] = Signal(name, fn, help, higher_is_better)
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


from . import attribution, baselines, gradients, updates  # noqa: E402,F401  (registration)
