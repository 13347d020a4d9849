"""layerscout: cheap RL probes that predict which decoder layers are worth RL-training alone
(arXiv 2607.01232), validated against single-layer RL ground truth. Public API re-exported lazily so
`import layerscout` does not pay for torch/transformers until a function is used."""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models", "decoder_layers": "models", "freeze_all_but": "models",
    "get_task": "tasks", "list_tasks": "tasks",
    "ProbeConfig": "config", "ModelSpec": "config",
    "run_probe": "probe", "rank_layers": "probe",
    "LayerRanking": "ranking",
    "RLConfig": "config", "train_layers": "training", "train_auto": "autolayer", "evaluate": "evaluate",
    "apply_delta": "delta", "export_ranking": "export",
    "CalibrationConfig": "calibrate", "run_calibration": "calibrate", "summarize": "calibrate",
    "validate": "report", "compare": "report",
    "LayerscoutError": "errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'layerscout' has no attribute {name!r}")
