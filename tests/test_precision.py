"""The precision policy (layerscout/precision.py): what is recorded, fp32 master copies for training, exact
restore after fp32 compute. Run: pytest tests/test_precision.py"""

import pytest
import torch

from layerscout.errors import LayerscoutError
from layerscout.precision import (Precision, autocast_for, fp32_compute, model_precision, training_precision,
                                  upcast_trainable)


def _model(dtype=torch.float32):
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)).to(dtype)


def test_policy_records():
    assert model_precision(_model()).as_record() == {"weights": "float32", "compute": "float32",
                                                     "master": "float32", "device": "cpu"}
    assert model_precision(_model(torch.bfloat16), "bfloat16").as_record()["weights"] == "bfloat16"
    auto = Precision("float32", "bfloat16", device_type="cuda")
    assert auto.as_record()["compute"] == "bfloat16 autocast" and auto.autocast_dtype == torch.bfloat16
    assert Precision("bfloat16", "bfloat16").autocast_dtype is None  # bf16 weights compute in bf16 without autocast


def test_fp32_compute_restores_bf16_weights_bit_for_bit():
    model = _model(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with fp32_compute(model) as fp32:
        assert all(p.dtype == torch.float32 for p in model.parameters()) and fp32.autocast_dtype is None
    assert all(torch.equal(before[k], v) and v.dtype == torch.bfloat16 for k, v in model.state_dict().items())


def test_upcast_trainable_keeps_frozen_weights_and_needs_autocast():
    model = _model(torch.bfloat16)
    model[1].requires_grad_(False)
    model[2].requires_grad_(False)
    with pytest.raises(LayerscoutError, match="cannot hold small RL updates"):
        upcast_trainable(model, autocast=False)
    upcast_trainable(model, autocast=True)
    assert model[0].weight.dtype == torch.float32 and model[2].weight.dtype == torch.bfloat16
    assert training_precision(model, bf16=True, fp16=False) == {
        "weights": "bfloat16", "trained": "float32", "compute": "bfloat16 autocast", "master": "float32"}
    with autocast_for(model):  # mixed dtypes run under autocast to the lower one
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
