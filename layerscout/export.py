"""Turn a layer ranking into the config another trainer reads: an axolotl `unfrozen_parameters` YAML list, a
PEFT `LoraConfig(layers_to_transform=...)` snippet, or a TRL requires_grad recipe. Every name in the output
is a real parameter path or module name of the given model (a meta-device model is enough). No compute.
"""

from __future__ import annotations

import re

from .errors import LayerscoutError

FORMATS = ("axolotl", "peft", "trl")


def top_layers(ranking: dict, top_k: int, depth: int) -> list[int]:
    """The `top_k` best layer indices of `ranking` (rank 1 first), checked against a `depth`-layer model."""
    rows = ranking.get("layers") or []
    if not rows:
        raise LayerscoutError("the ranking has no layers")
    if not 1 <= top_k <= depth:
        raise LayerscoutError(f"top_k must be between 1 and the model's {depth} layers; got {top_k}")
    if top_k > len(rows):
        raise LayerscoutError(f"top_k={top_k} but the ranking scores only {len(rows)} layers")
    ordered = sorted(rows, key=lambda r: r["rank"])
    out = [int(r["index"]) for r in ordered[:top_k]]
    bad = [k for k in out if not 0 <= k < depth]
    if bad:
        raise LayerscoutError(f"the ranking names layer {bad[0]}, but the model has layers 0..{depth - 1} "
                              f"(ranking for {ranking.get('model')}?)")
    return out


def export_ranking(ranking: dict, model, fmt: str, top_k: int = 1) -> str:
    """Text that trains only the ranking's `top_k` layers of `model` in another tool (`fmt`: axolotl | peft | trl).

    Example: `export_ranking(r, model, "axolotl", 3)` gives
    "unfrozen_parameters:\\n  - ^model\\.layers\\.12\\..*\\n ..." for a Llama/Qwen model.
    """
    from .models import layer_prefix, num_layers

    if fmt not in FORMATS:
        raise LayerscoutError(f"Unknown export format {fmt!r}. Available: {', '.join(FORMATS)}")
    layers = top_layers(ranking, top_k, num_layers(model))
    prefixes = [layer_prefix(model, k) for k in layers]
    header = (f"# layerscout: train only the top {top_k} of {num_layers(model)} layers of "
              f"{ranking.get('model', '?')} by predicted contribution: {layers}")
    if fmt == "axolotl":
        lines = [header, "unfrozen_parameters:"] + [f"  - ^{re.escape(p)}.*" for p in prefixes]
    elif fmt == "peft":
        targets = _linear_names(model, layers[0])
        lines = [header, "from peft import LoraConfig", "", "lora_config = LoraConfig(",
                 f"    target_modules={targets!r},", f"    layers_to_transform={layers!r},",
                 f"    layers_pattern={prefixes[0].rstrip('.').split('.')[-2]!r},", ")"]
    else:
        lines = [header, "# TRL has no freeze flag: set requires_grad; the Trainer's optimizer then only holds",
                 "# the trainable tensors. Embeddings and LM head stay frozen, as in the paper.",
                 f"TRAINABLE = {tuple(prefixes)!r}",
                 "for name, param in model.named_parameters():",
                 "    param.requires_grad = name.startswith(TRAINABLE)",
                 "trainer = GRPOTrainer(model=model, args=GRPOConfig(...), reward_funcs=..., train_dataset=...)"]
    return "\n".join(lines) + "\n"


def _linear_names(model, k: int) -> list[str]:
    """Leaf names of the Linear modules inside block k (q_proj, ..., down_proj): PEFT's target_modules."""
    import torch

    from .models import decoder_layers

    block = decoder_layers(model)[k]
    return sorted({name.rsplit(".", 1)[-1] for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)})
