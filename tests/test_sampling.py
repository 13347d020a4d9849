"""Prompt selection: the band and stop rules by hand, the math difficulty ladder, the hub fallback (the hub is not
reachable here), the pass-rate estimate and dynamic sampling on the test organism, and prompting per model (a tiny
Qwen3 trained here behind a Qwen3-style thinking template). Run: pytest tests/test_sampling.py"""

import numpy as np
import pytest
import torch

from layerscout.config import ProbeConfig
from layerscout.errors import LayerscoutError
from layerscout.precision import Precision
from layerscout.probe import run_probe
from layerscout.sampling import choose_rung, in_band, next_draw, prompting, select_prompts, too_easy
from layerscout.tasks import get_task, render_prompt
from layerscout.tasks.math import LADDER, hub_reachable

BAND = (0.2, 0.8)
SMALL = dict(num_prompts=4, num_generations=4, update_steps=1, signals=["grad_norm"], predictor=None,
             score_weights={"grad_norm": 1.0})


def test_band_share_and_climb_rule():
    assert in_band(np.array([0.0, 0.2, 0.5, 0.8, 1.0]), BAND) == pytest.approx(3 / 5)
    assert too_easy(np.array([1.0, 0.75, 1.0, 1.0]), BAND)  # mean 0.94 > 0.8
    assert not too_easy(np.array([1.0, 0.5, 0.5, 1.0]), BAND)  # mean 0.75


def test_choose_rung_prefers_the_band_then_its_centre_then_the_easier_rung():
    easy, mid, hard = np.array([1.0, 1.0, 0.75, 1.0]), np.array([0.5, 0.25, 0.0, 0.75]), np.zeros(4)
    assert choose_rung([easy, mid, hard], BAND) == 1  # 3/4 in band against 1/4 and 0
    # same share in band (1/2): the mean nearer 0.5 wins (0.5 against 0.3125)
    assert choose_rung([np.array([1.0, 0.0, 0.5, 0.5]), np.array([0.0, 0.25, 0.0, 1.0])], BAND) == 0
    assert choose_rung([hard, hard], BAND) == 0  # full tie: the easier rung
    with pytest.raises(ValueError):
        choose_rung([], BAND)


def test_dynamic_sampling_stop_rule():
    assert next_draw(kept=16, drawn=20, target=16, budget=48, chunk=2) == 0  # enough groups
    assert next_draw(kept=3, drawn=48, target=16, budget=48, chunk=2) == 0  # budget spent
    assert next_draw(kept=0, drawn=0, target=16, budget=48, chunk=2) == 16  # nothing drawn yet: the target
    assert next_draw(kept=8, drawn=16, target=16, budget=48, chunk=2) == 16  # yield 1/2: 8 missing / 0.5
    assert next_draw(kept=1, drawn=16, target=16, budget=48, chunk=2) == 32  # yield floored at 1/4: 60 -> cap 32
    assert next_draw(kept=12, drawn=16, target=16, budget=48, chunk=8) == 8  # 4 missing / 0.75 = 6 -> one chunk


def test_ladder_rungs_are_ordered_and_rung_zero_is_the_default_data():
    task = get_task("math", rung="auto")
    names = [n for n, _ in task.ladder()]
    assert names == [r.name for r in LADDER if r.generator]  # hub-only rungs need hub=true
    default = get_task("math").load_prompts("train", 8, 0)
    assert task.load_prompts("train", 8, 0)["question"] == default["question"]  # the organism's data
    lengths = [t.max_completion_length for _, t in task.ladder()]
    assert lengths == sorted(lengths) and lengths[0] == 32
    words = get_task("math", rung=4).load_prompts("train", 2, 0)["question"]
    assert all(len(q.split()) > 20 for q in words)  # multi-step word problems
    assert get_task("math", rung=1).load_prompts("train", 4, 0)["answer"] != default["answer"][:4]


def test_rung_option_errors():
    with pytest.raises(LayerscoutError, match="rung sets the data; drop generator"):
        get_task("math", rung=2, generator="chain_sum")
    explicit = get_task("math", rung="auto", generator="chain_sum")  # explicit data turns the ladder off
    assert explicit.ladder() == [] and explicit.config["generator"] == "chain_sum"
    assert get_task("math", rung="auto", dataset="x.jsonl").ladder() == []
    with pytest.raises(LayerscoutError, match="rung must be"):
        get_task("math", rung=len(LADDER))
    with pytest.raises(LayerscoutError, match="hub dataset only: set hub=true"):
        get_task("math", rung=len(LADDER) - 1)


@pytest.mark.skipif(hub_reachable(), reason="checks the offline fallback; the hub answers here")
def test_hub_rungs_fall_back_to_their_generator_offline():
    task = get_task("math", rung=4, hub=True)
    with pytest.warns(UserWarning, match="not reachable; rung word_problem falls back to reasoning-gym's gsm_symbolic"):
        rows = task.load_prompts("train", 3, 0)
    assert task.data_source is None and rows["question"] == get_task("math", rung=4).load_prompts("train", 3, 0)[
        "question"]
    with pytest.raises(LayerscoutError, match="HuggingFaceH4/MATH-500.*not reachable"):
        get_task("math", rung=len(LADDER) - 1, hub=True).load_prompts("train", 3, 0)
    assert [n for n, _ in get_task("math", rung="auto", hub=True).ladder()][-1] == "competition"


def test_probe_picks_the_organisms_rung_and_keeps_only_informative_groups(organism):
    """The organism is trained on rung 0: the estimate stops there (rung 1 is beyond it) and dynamic sampling
    probes only groups whose rewards differ; the ranking says what it chose and spent."""
    model, tok = organism
    ranking = run_probe(model, tok, get_task("math", rung="auto"), ProbeConfig(**SMALL), progress=False)
    ro = ranking.to_dict()["rollouts"]
    assert ro["rung"] == "sum_1digit" and ro["rung_index"] == 0
    assert [e["rung"] for e in ro["pass_rate_estimate"]][0] == "sum_1digit"
    assert ro["probed_informative"] == ro["probed_groups"] == ro["informative_groups"] == 4
    assert ro["informative_fraction"] == 1.0
    assert 4 <= ro["prompts_drawn"] <= ro["prompt_budget"] == 12
    assert ro["budget_used"] == pytest.approx(ro["prompts_drawn"] / 12, abs=1e-3)
    assert ro["max_completion_length"] == 32
    off = run_probe(model, tok, get_task("math"), ProbeConfig(**SMALL, dynamic_sampling=False), progress=False)
    off = off.to_dict()["rollouts"]
    assert off["rung"] is None and off["prompts_drawn"] == off["probed_groups"] == 4


def test_estimate_climbs_while_the_model_passes_everything(organism, monkeypatch):
    """A model that always succeeds: the estimate climbs every rung; all tie at 0 in band and the easiest wins."""
    model, tok = organism
    task = get_task("math", rung="auto")
    calls = []

    def always(self, completions, **kw):
        calls.append(self.rung.name)
        return [1.0] * len(completions)

    monkeypatch.setattr(type(task), "reward", always)
    cfg = ProbeConfig(**SMALL, max_completion_length=2)
    chosen, groups, sel = select_prompts(model, tok, task, cfg, Precision(), progress=False)
    assert [e["rung"] for e in sel.estimate] == [n for n, _ in task.ladder()]  # climbed to the top
    assert sel.rung == "sum_1digit" and chosen.rung.name == "sum_1digit"
    assert sel.prompts_drawn == cfg.prompt_budget and sel.informative_drawn == 0  # the budget ran out
    assert groups.num_groups == 4


# ---------------------------------------------------------------------- prompting per model

QWEN3_STYLE = (  # Qwen3's hybrid thinking template, reduced to plain turns
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}{%- endif -%}"
)


@pytest.fixture(scope="module")
def hybrid_thinker():
    """A 2-layer Qwen3 fine-tuned here as a hybrid thinking model is: with thinking off (the empty think block in
    the prompt) it answers at once; with thinking on it thinks for ~90 tokens first."""
    from layerscout.organisms import build_model, build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    tok.chat_template = QWEN3_STYLE
    model = build_model("qwen3", 2, len(tok), seed=0, hidden_size=64)
    data = get_task("math").load_prompts("train", 256, 0)
    examples = []
    for msgs, answer in zip(data["prompt"], data["answer"]):
        for thinking in (False, True):
            label = ("<think>\n" + "Let me add it up. " * 5 + "</think>\n\n" if thinking else "") + answer
            p = tok(render_prompt(tok, msgs, enable_thinking=thinking), add_special_tokens=False)["input_ids"]
            examples.append((p, tok(label, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        batch = [examples[i] for i in torch.randint(len(examples), (16,), generator=gen)]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, (p, a) in enumerate(batch):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, attention_mask=(ids != 0) | (labels != -100), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def _truncated(groups, length, eos) -> tuple[int, float]:
    """(groups whose every completion hit `length` without EOS, share of such completions)."""
    cut = [len(c) >= length and c[-1] != eos for _, c in groups.rows]
    g = groups.group_size
    return sum(all(cut[i:i + g]) for i in range(0, len(cut), g)), float(np.mean(cut))


def test_thinking_model_probes_with_thinking_off_and_no_truncated_groups(hybrid_thinker):
    model, tok = hybrid_thinker
    task = get_task("math", rung="auto")
    cfg = ProbeConfig(**SMALL)
    render, length = prompting(cfg, tok, task)
    assert render == {"enable_thinking": False} and length == 32
    _, groups, sel = select_prompts(model, tok, task, cfg, Precision(), progress=False)
    assert sel.prompting == {"enable_thinking": False}
    assert _truncated(groups, length, tok.eos_token_id)[0] == 0
    # what the default avoids: the same budget with thinking on cuts most completions off mid-thought
    thinking = ProbeConfig(**SMALL, enable_thinking=True, max_completion_length=32, dynamic_sampling=False)
    _, groups, _ = select_prompts(model, tok, get_task("math"), thinking, Precision(), progress=False)
    assert _truncated(groups, 32, tok.eos_token_id)[1] >= 0.5
    assert prompting(ProbeConfig(**SMALL, enable_thinking=True), tok, task)[1] == 32 + cfg.thinking_tokens


def test_base_models_get_a_few_shot_prompt_and_chat_models_their_template(organism):
    _, tok = organism
    task = get_task("math")
    render, length = prompting(ProbeConfig(), tok, task)
    assert render == {} and length == 32  # a chat model, no thinking template
    tok.chat_template = None  # a base model
    render, _ = prompting(ProbeConfig(), tok, task)
    assert len(render["shots"]) == 3
    text = render_prompt(tok, [{"role": "user", "content": "Calculate 2 + 3."}], **render)
    q, a = render["shots"][0]
    assert text.startswith(f"Question: {q}\nAnswer: {a}\n\n") and text.endswith("Question: Calculate 2 + 3.\nAnswer:")
    assert prompting(ProbeConfig(few_shot=0, max_completion_length=7), tok, task) == ({}, 7)
