"""Provenance and crash-safe writes: every probe and run records the versions, git commit, seed, command
and wall time that produced it, and the fingerprint of the model it was made on; JSON files are written
atomically (tmp + rename), JSONL rows are appended and fsynced one at a time, output paths are checked before
the work, and a result that cannot be written where asked is saved to a rescue file that the error names."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from .errors import LayerscoutError

PACKAGES = ("layerscout", "torch", "transformers", "trl", "datasets", "accelerate", "captum", "scikit-learn",
            "numpy", "reasoning-gym", "math-verify", "textworld-express")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def git_commit() -> str | None:
    """Commit of the layerscout checkout when this process first asked, if it is one (a pip install from a wheel
    has none): a sweep runs for hours while commits land, and its records must name the code it runs."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    return {"versions": versions(), "git_commit": git_commit(), "command": command(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def command(argv: list[str] | None = None) -> str:
    """The command line as someone would paste it: `layerscout ...` or `python -m layerscout.MODULE ...`, not the
    absolute path of the module file that `python -m` puts in argv[0]."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    if script.name == "layerscout" or (script.suffix == ".py" and script.stem == "cli"
                                       and script.resolve().parent == Path(__file__).resolve().parent):
        return shlex.join(["layerscout", *argv[1:]])
    if script.suffix == ".py" and script.resolve().parent == Path(__file__).resolve().parent:
        return shlex.join(["python", "-m", f"layerscout.{script.stem}", *argv[1:]])
    return shlex.join(argv)


# Config keys that say how a model was loaded or runs, not what it is.
_RUNTIME_CONFIG_KEYS = {"dtype", "torch_dtype", "transformers_version", "use_cache", "output_attentions",
                        "output_hidden_states", "return_dict"}
FINGERPRINT_SAMPLES = 4  # values read per sampled tensor
FINGERPRINT_RTOL = 1e-2  # bfloat16 keeps ~3 significant digits: a bf16 and an fp32 load of one model match


def model_fingerprint(model) -> dict:
    """What binds a ranking (or a run) to its model, cheaply: a hash of the architecture config and the
    parameter names and shapes, plus a few weight values (FINGERPRINT_SAMPLES spread over the input embedding
    and over the first tensor of every decoder block). Values are compared with FINGERPRINT_RTOL, so a bfloat16
    and a float32 load of the same weights match, while another seed, checkpoint or model does not. Cost: a
    few element reads. Example: `fingerprints_match(model_fingerprint(m), ranking.model_fingerprint)`."""
    import torch

    from .models import decoder_layers

    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in _RUNTIME_CONFIG_KEYS}
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    digest = hashlib.sha256(json.dumps([config, shapes], sort_keys=True, default=str).encode()).hexdigest()[:16]
    tensors = [model.get_input_embeddings().weight] + [next(b.parameters()) for b in decoder_layers(model)]
    sample = []
    with torch.no_grad():
        for t in tensors:
            flat = t.detach().reshape(-1)
            idx = [(2 * i + 1) * flat.numel() // (2 * FINGERPRINT_SAMPLES) for i in range(FINGERPRINT_SAMPLES)]
            sample += [float(f"{v:.4g}") for v in flat[idx].float().cpu().tolist()]
    return {"config": digest, "params": sum(p.numel() for _, p in model.named_parameters()), "sample": sample}


def fingerprint_mismatch(a: dict | None, b: dict | None, missing_ok: bool = False) -> str | None:
    """Why fingerprints `a` and `b` are of different models, or None when they match. A side with none recorded
    (a record from before fingerprints were kept) is a mismatch unless `missing_ok`: then nothing can be checked."""
    import math

    if not a or not b:
        return None if missing_ok else "no model fingerprint recorded"
    if a.get("config") != b.get("config") or a.get("params") != b.get("params"):
        return "the architecture (config or parameter shapes) differs"
    sa, sb = a.get("sample") or [], b.get("sample") or []
    close = all(math.isclose(x, y, rel_tol=FINGERPRINT_RTOL, abs_tol=1e-6) for x, y in zip(sa, sb))
    if len(sa) != len(sb) or not close:
        return "the weights differ"
    return None


def portable_path(path: str | Path) -> str:
    """How a record names a file: relative to its git checkout's top, else to the working directory, else
    just its name; never an absolute path of the machine that ran it."""
    path = Path(path).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        top = ""
    for root in (Path(top).resolve() if top else None, Path.cwd().resolve()):
        if root is not None and path.is_relative_to(root):
            return str(path.relative_to(root))
    return path.name


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_writable(path: str | Path, kind: str = "file") -> Path:
    """Fail now, before any work, when `path` (a file, or a dir with kind="dir") cannot be written: its dir
    is created if missing (as the write would)."""
    path = Path(path)
    folder = path if kind == "dir" else path.parent
    if kind == "file" and path.is_dir():
        raise LayerscoutError(f"cannot write {path}: it is a directory")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise LayerscoutError(f"cannot use {path} as output dir: it is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".layerscout-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LayerscoutError(f"cannot write to {folder}: {e.strerror or e}") from None
    return path


def rescue_path(name: str) -> Path:
    """A fresh path in the system temp dir for a result that could not be written where asked."""
    return Path(tempfile.mkdtemp(prefix="layerscout-rescue-")) / name


def write_json_or_rescue(path: str | Path, data) -> Path:
    """write_json, but when that fails the data goes to a rescue file and the error says where."""
    try:
        return write_json(path, data)
    except OSError as e:
        rescue = write_json(rescue_path(Path(path).name), data)
        raise LayerscoutError(f"could not write {path} ({e.strerror or e}); the result was saved to {rescue}") from None


def write_json(path: str | Path, data) -> Path:
    """Atomic: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are meant to be shared
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | Path, row: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
