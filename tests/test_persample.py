"""Per-sample block gradients from hooks (layerscout/persample.py) against autograd, one sequence at a time, on
tiny random Qwen3 / Qwen2 (biases) / Llama / GPT-2 (Conv1D, LayerNorm) models. Run: pytest tests/test_persample.py"""

import pytest
import torch

from layerscout.models import decoder_layers
from layerscout.persample import BlockGradients, linear_sample_sq_norms


def _tiny(arch: str):
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=3, n_head=4, n_positions=32))
    from layerscout.organisms import build_model

    return build_model(arch, num_layers=3, vocab_size=50, seed=0, hidden_size=32)


def _per_sequence_logp(model, ids, attn, cmask):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * cmask[:, 1:]).sum(dim=1)  # (B,)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 50, (4, 9), generator=g)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # left padding
    attn[2, :1] = 0
    cmask = torch.zeros_like(ids)
    cmask[:, 5:] = 1
    return ids, attn, cmask


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama", "gpt2"])
def test_hooks_match_autograd_per_sequence(arch):
    model = _tiny(arch).eval()
    blocks = decoder_layers(model)
    ids, attn, cmask = _batch()
    scale = torch.tensor([0.5, -1.0, 2.0, 0.25])
    groups = [(0, slice(0, 2)), (1, slice(2, 4))]
    params = [list(b.parameters()) for b in blocks]

    # reference: autograd, one sequence's log-likelihood at a time
    grads = [torch.autograd.grad(lp, [p for ps in params for p in ps], retain_graph=True, allow_unused=True)
             for lp in _per_sequence_logp(model, ids, attn, cmask)]
    sizes = [len(ps) for ps in params]

    def by_block(gs):
        out, i = [], 0
        for n in sizes:
            out.append([g if g is not None else torch.zeros(1) for g in gs[i:i + n]])
            i += n
        return out

    per = [by_block(gs) for gs in grads]  # [sample][block][param]
    fisher = torch.tensor([[sum(float(g.double().square().sum()) for g in per[b][k]) for k in range(len(blocks))]
                           for b in range(4)], dtype=torch.float64).sum(dim=0)
    group_sq = torch.tensor([[sum(float(sum(scale[b] * per[b][k][j].double() for b in range(r.start, r.stop))
                                        .square().sum()) for j in range(sizes[k])) for k in range(len(blocks))]
                             for _, r in groups], dtype=torch.float64)
    total = [sum(scale[b] * grads[b][j] for b in range(4)) for j in range(sum(sizes))]

    for p in model.parameters():
        p.requires_grad_(False)
    with BlockGradients(blocks, num_groups=2, per_sample=True) as bg:
        bg.backward(_per_sequence_logp(model, ids, attn, cmask).sum(), scale=scale, groups=groups)
    flat = [p for ps in params for p in ps]
    for p, ref in zip(flat, total):
        torch.testing.assert_close(bg.grads[p], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bg.sample_sq, fisher, rtol=1e-5, atol=0)
    torch.testing.assert_close(bg.group_sq, group_sq, rtol=1e-5, atol=0)
    assert not any(p.grad is not None for p in model.parameters())


def test_ghost_and_direct_norms_agree_with_brute_force():
    g = torch.Generator().manual_seed(0)
    a, gr = torch.randn(3, 5, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    brute = torch.stack([sum(torch.outer(gr[b, t], a[b, t]) for t in range(5)).square().sum() for b in range(3)])
    torch.testing.assert_close(linear_sample_sq_norms(a, gr, ghost=True), brute)
    torch.testing.assert_close(linear_sample_sq_norms(a, gr, ghost=False), brute)


def test_hooks_are_removed_and_no_grad_forwards_keep_nothing():
    model = _tiny("qwen3").eval()
    blocks = decoder_layers(model)
    ids, attn, _ = _batch()
    for p in model.parameters():
        p.requires_grad_(False)
    with BlockGradients(blocks) as bg, torch.no_grad():
        model(input_ids=ids, attention_mask=attn)
    assert all(float(g.abs().sum()) == 0 for g in bg.grads.values())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
