# Run: . .venv/bin/activate && python -m pytest tests/test_tasks.py -q
"""Task registry, split disjointness and determinism, the math reward, and local-file sources."""

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layerscout.errors import LayerscoutError
from layerscout.tasks import get_task, list_tasks, register_task, render_prompt
from layerscout.tasks.base import Task, split_of
from layerscout.tasks.math import MathTask


def test_registry_lists_and_suggests():
    assert "math" in list_tasks()
    assert isinstance(get_task("math"), MathTask)
    with pytest.raises(LayerscoutError, match=r"Unknown task 'maht'\. Did you mean: math\? Available: (\w+, )*math"):
        get_task("maht")


def test_register_task_and_unknown_option():
    @register_task("echo_test")
    class Echo(Task):
        options = {"loud": False}

    try:
        assert get_task("echo_test", loud=True).config == {"loud": True}
        with pytest.raises(LayerscoutError, match="no option 'volume'; valid options: loud"):
            get_task("echo_test", volume=3)
    finally:
        from layerscout import tasks

        tasks._TASKS.pop("echo_test")


def test_math_unknown_option_lists_valid_ones():
    with pytest.raises(LayerscoutError, match="valid options: answer_column, dataset"):
        get_task("math", generater="x")


def test_splits_are_disjoint_and_hash_assigned():
    task = get_task("math")
    train = task.load_prompts("train", 500, seed=0)
    heldout = task.load_prompts("heldout", 100, seed=0)
    assert len(train) == 500 and len(heldout) == 100
    assert not set(train["question"]) & set(heldout["question"])
    assert len(set(train["question"])) == len(train)
    assert all(split_of(q) == "heldout" for q in heldout["question"])
    # another seed draws other questions, still never a held-out one for training
    other = task.load_prompts("train", 500, seed=1)
    assert not set(other["question"]) & set(heldout["question"])
    assert set(other["question"]) != set(train["question"])


def test_load_prompts_deterministic_and_conversational():
    a = get_task("math").load_prompts("heldout", 50, seed=3)
    b = get_task("math").load_prompts("heldout", 50, seed=3)
    assert a.to_list() == b.to_list()
    row = a[0]
    assert row["prompt"] == [{"role": "user", "content": row["question"]}]
    assert row["question"].startswith("Calculate ")
    assert int(row["answer"]) == eval(row["question"][len("Calculate "):-1])  # the gold is right


def test_system_prompt_and_bad_split():
    task = get_task("math", system_prompt="Answer with a number.")
    row = task.load_prompts("train", 1, seed=0)[0]
    assert row["prompt"][0] == {"role": "system", "content": "Answer with a number."}
    assert row["prompt"][1]["role"] == "user"
    with pytest.raises(LayerscoutError, match="split must be one of train, heldout"):
        task.load_prompts("test", 1, seed=0)


def test_generator_errors():
    with pytest.raises(LayerscoutError, match="Unknown reasoning_gym generator 'basic_arithmetc'. Did you mean"):
        get_task("math", generator="basic_arithmetc").load_prompts("train", 1, 0)
    with pytest.raises(LayerscoutError, match="rejected generator_config"):
        get_task("math", generator_config={"min_terms": 3, "max_terms": 2}).load_prompts("train", 1, 0)


def test_generated_prompts_reach_n_when_questions_repeat():
    """a +- b on 1-2 digits repeats its 1-digit questions: the first draw (2n/share + 100 items) held 1389 unique
    held-out questions of 1600 asked. Longer draws extend shorter ones, so smaller n keep their prompts."""
    cfg = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+", "-"],
           "allow_parentheses": False, "allow_negation": False}
    task = get_task("math", generator_config=cfg)
    held = task.load_prompts("heldout", 1600, 0)["question"]
    assert len(held) == len(set(held)) == 1600
    assert task.load_prompts("heldout", 512, 0)["question"] == held[:512]


def test_generated_prompts_draw_at_most_max_draw_times_the_first(monkeypatch):
    """Question texts have long tails (1-digit a +- b has thousands of phrasings): asking for more held-out questions
    than there are in reach (Task.lookup asks 10000) returns what MAX_DRAW times the first draw holds, instead of
    drawing on and on."""
    import reasoning_gym

    from layerscout.tasks import math as math_task

    real, drawn = reasoning_gym.create_dataset, []

    def counted(name, size, seed, **cfg):
        drawn.append(size)
        if sum(drawn) > math_task.MAX_DRAW * drawn[0]:
            raise RuntimeError(f"drew {sum(drawn)} items, more than {math_task.MAX_DRAW} x {drawn[0]}")
        return real(name, size=size, seed=seed, **cfg)

    monkeypatch.setattr(reasoning_gym, "create_dataset", counted)
    task = get_task("math", generator_config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                              "operators": ["+"]})
    held = task.load_prompts("heldout", 1000, 0)["question"]
    assert 0 < len(held) < 1000 and sum(drawn) == math_task.MAX_DRAW * drawn[0]
    drawn.clear()
    assert held[:100] == get_task("math", generator_config=task.config["generator_config"]).load_prompts(
        "heldout", 100, 0)["question"]


@pytest.mark.parametrize("completion, answer, expected", [
    ("-11", "-11", 1.0),
    ("The answer is 42.", "42", 1.0),
    ("12 + 5 = 17", "17", 1.0),
    ("12-5", "-5", 0.0),  # "5" after a binary minus is not -5
    ("A: 5.0", "5", 1.0),
    ("1,234", "1234", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # only math-verify gets this one
    ("41", "42", 0.0),
    ("To calculate the result of (5 - 3), we", "2", 0.0),  # a restated question is not an answer
    ("so $x = \\frac{6}{3}$", "2", 1.0),
    ("asdf%$#", "3", 0.0),
    ("", "3", 0.0),
    ("The answer is 42", "Natalia sold 48/2 = 24 clips in May.\n#### 42", 1.0),
    ("The answer is 24", "Natalia sold 48/2 = 24 clips in May.\n#### 42", 0.0),
])
def test_math_reward(completion, answer, expected):
    assert get_task("math").reward([completion], [answer]) == [expected]


def test_reward_trl_signature_and_message_completions():
    task = get_task("math")
    rewards = task.reward(
        prompts=[[{"role": "user", "content": "Calculate 1 + 1."}]] * 3,
        completions=[[{"role": "assistant", "content": "2"}], [{"role": "assistant", "content": "3"}],
                     [{"role": "assistant", "content": "so it is 2"}]],
        completion_ids=[[1], [2], [3]], answer=["2", "2", "2"], question=["Calculate 1 + 1."] * 3,
        trainer_state=None)
    assert rewards == [1.0, 0.0, 1.0]
    assert task.reward.__name__ == "reward"


def test_reward_off_the_main_thread_uses_the_numeric_check():
    task, out = get_task("math"), {}
    t = threading.Thread(target=lambda: out.update(r=task.reward(["7", "\\frac{1}{2}", "x"], ["7", "0.5", "7"])))
    t.start()
    t.join()
    assert out["r"] == [1.0, 0.0, 0.0]


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_local_jsonl_with_custom_columns(tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "solution": f"{i} plus {i}\n#### {2 * i}"} for i in range(200)]
    path = tmp_path / "data.jsonl"
    _write_rows(path, rows + rows[:10])  # duplicates are dropped
    task = get_task("math", dataset=str(path), question_column="problem", answer_column="solution")
    train = task.load_prompts("train", 1000, seed=0)
    heldout = task.load_prompts("heldout", 1000, seed=0)
    assert len(train) + len(heldout) == 200  # n larger than available: take what exists
    assert 20 <= len(heldout) <= 60
    assert not set(train["question"]) & set(heldout["question"])
    i = int(train[0]["question"].split()[2])
    assert train[0]["answer"] == str(2 * i)
    assert task.load_prompts("train", 5, seed=1)["question"] != task.load_prompts("train", 5, seed=2)["question"]


def test_local_parquet_csv_and_json(tmp_path):
    qs = [f"Compute {i} * 3." for i in range(100)]
    ans = [str(3 * i) for i in range(100)]
    pq.write_table(pa.table({"q": qs, "a": ans}), tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text("q,a\n" + "".join(f"{q},{a}\n" for q, a in zip(qs, ans)))
    (tmp_path / "d.json").write_text(json.dumps({"q": qs, "a": ans}))
    got = [get_task("math", dataset=str(tmp_path / f"d.{ext}"), question_column="q", answer_column="a")
           .load_prompts("heldout", 100, seed=0).to_list() for ext in ("parquet", "csv", "json")]
    assert got[0] == got[1] == got[2] and len(got[0]) > 0
    assert all(r["answer"] == str(3 * int(r["question"].split()[1])) for r in got[0])


def test_local_dataset_dir_goes_through_load_dataset(tmp_path):
    data = tmp_path / "ds"
    data.mkdir()
    _write_rows(data / "train.jsonl", [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(50)])
    _write_rows(data / "test.jsonl", [{"question": f"{i}+2?", "answer": str(i + 2)} for i in range(50)])
    task = get_task("math", dataset=str(data))
    assert len(task.load_prompts("train", 1000, 0)) + len(task.load_prompts("heldout", 1000, 0)) == 100


def test_bad_inputs(tmp_path):
    def load(path, **kw):
        return get_task("math", dataset=str(path), **kw).load_prompts("train", 5, seed=0)

    with pytest.raises(LayerscoutError, match="no such file: .*missing.jsonl"):
        load(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LayerscoutError, match="empty dataset"):
        load(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1", "answer": "2"}\n{"question": oops}\n')
    with pytest.raises(LayerscoutError, match="bad.jsonl line 2: not valid JSON"):
        load(tmp_path / "bad.jsonl")
    _write_rows(tmp_path / "cols.jsonl", [{"problem": "1+1", "solution": "2"}])
    with pytest.raises(LayerscoutError, match="no column 'question', 'answer'; columns: problem, solution"):
        load(tmp_path / "cols.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(LayerscoutError, match="unsupported file type '.txt'"):
        load(tmp_path / "d.txt")
    with pytest.raises(LayerscoutError, match="source is 'reasoning_gym'"):
        get_task("math", source="reasoning_gym", dataset="x.jsonl")
    # rows exist, but none falls into the held-out split
    q = next(f"q{i}" for i in range(100) if split_of(f"q{i}") == "train")
    _write_rows(tmp_path / "one.jsonl", [{"question": q, "answer": "1"}])
    with pytest.raises(LayerscoutError, match="empty dataset: task 'math' has no heldout examples"):
        get_task("math", dataset=str(tmp_path / "one.jsonl")).load_prompts("heldout", 5, seed=0)


def test_render_prompt_with_and_without_template():
    class Plain:
        chat_template = None

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    assert render_prompt(Plain(), msgs) == "Be brief.\n1+1?\n"

    class Templated:
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return "|".join(m["content"] for m in messages) + "|A:"

    assert render_prompt(Templated(), msgs) == "Be brief.|1+1?|A:"


def test_constant_baseline_is_the_most_common_gold_answer():
    # "1" is the mode (twice as text); "1.0" matches it as a number, "2" does not: 3 of 4
    assert MathTask().constant_baseline(["1", "2", "1.0", "1"]) == {"answer": "1", "score": 0.75}
    assert MathTask().constant_baseline(["x + 1", "#### 7", "x + 1"]) == {"answer": "x + 1", "score": 2 / 3}
    assert Task.constant_baseline(Task(), ["1"]) is None  # tasks without gold answers say nothing
