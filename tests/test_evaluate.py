"""Held-out score S (evaluate.py) on a tiny random Qwen3: greedy is deterministic, sampling is seeded without
touching the global RNG, the score is the mean reward. Run: pytest tests/test_evaluate.py   (about 5 s)"""

import pytest
import torch

from layerscout.errors import LayerscoutError
from layerscout.evaluate import evaluate
from layerscout.organisms import build_model, build_tokenizer
from layerscout.tasks.math import MathTask


class DigitTask(MathTask):
    def score(self, text, answer):
        return sum(c.isdigit() for c in text) / max(1, len(text))


class ConstantTask(MathTask):
    def score(self, text, answer):
        return 0.25


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    return build_model("qwen3", 2, len(tok), seed=0, hidden_size=32), tok


def test_greedy_is_deterministic(setup):
    model, tok = setup
    a = evaluate(model, tok, DigitTask(), n=6, max_new_tokens=6)
    b = evaluate(model, tok, DigitTask(), n=6, max_new_tokens=6, seed=0)
    assert a["score"] == b["score"] and 0 <= a["score"] <= 1
    assert a["n"] == 6 and a["greedy"] and a["num_samples"] == 1 and a["seconds"] >= 0


def test_score_is_the_mean_reward(setup):
    model, tok = setup
    assert evaluate(model, tok, ConstantTask(), n=4, max_new_tokens=2)["score"] == pytest.approx(0.25)


def test_sampling_is_seeded_and_leaves_state_alone(setup):
    model, tok = setup
    model.train()
    tok.padding_side = "right"
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = evaluate(model, tok, DigitTask(), n=4, num_samples=3, max_new_tokens=6, seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    assert model.training and tok.padding_side == "right"
    b = evaluate(model, tok, DigitTask(), n=4, num_samples=3, max_new_tokens=6, seed=5)
    assert a["score"] == b["score"] and not a["greedy"] and a["num_samples"] == 3


def test_bad_num_samples(setup):
    with pytest.raises(LayerscoutError, match="num_samples must be >= 1"):
        evaluate(*setup, DigitTask(), num_samples=0)


def test_per_prompt_rewards_average_to_the_score_and_name_their_prompts(setup):
    model, tok = setup
    result = evaluate(model, tok, DigitTask(), n=5, num_samples=3, max_new_tokens=6, seed=2)
    questions = DigitTask().load_prompts("heldout", 5, 2)["question"]
    assert result["ids"] == list(questions)
    assert len(result["per_prompt"]) == 5
    assert sum(result["per_prompt"]) / 5 == pytest.approx(result["score"])


def test_constant_answer_is_recorded_and_warned_about_when_it_beats_the_model(setup):
    from layerscout.evaluate import constant_warning

    model, tok = setup
    result = evaluate(model, tok, MathTask(), n=8, max_new_tokens=4)
    answers = MathTask().load_prompts("heldout", 8, 0)["answer"]
    assert result["constant_answer"] == MathTask().constant_baseline(list(answers))
    assert constant_warning({"score": 0.34, "constant_answer": {"answer": "1", "score": 0.77}}) == (
        "answering '1' to every held-out prompt scores 0.770, above the model's 0.340: RL can gain by learning "
        "that answer alone; use prompts whose answers vary")
    assert constant_warning({"score": 0.2, "constant_answer": {"answer": "6", "score": 0.06}}) is None
    assert constant_warning({"score": 0.2}) is None
