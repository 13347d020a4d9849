"""Tiny templated Python problems, short enough for a character-level model organism: a one-line spec
("f(x) returns (x plus 3) times 2") asks for a one-line function ("def f(x): return (x + 3) * 2") that three
asserts check. About 4,400 distinct problems from 18 families, enumerated (the set has no randomness); each
problem's test inputs come from a generator seeded by its spec and are chosen so that every near miss (one
constant off by one, or one operator swapped: + -, * +, // %, > >=, < <=, == !=, max min) fails at least one
test. Cost: building the set takes about 2 s, once per process.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
from typing import Any, Callable

from ..errors import LayerscoutError

NUM_TESTS = 3
TRIES = 400  # input draws per problem before it is dropped (none is dropped today)
# English word -> Python operator of the arithmetic families
OPS = {"plus": "+", "minus": "-", "times": "*"}
COMPARISONS = {"greater than": ">", "less than": "<", "at least": ">=", "at most": "<=", "equal to": "==",
               "not equal to": "!="}
# The near misses of an operator: what a sloppy programmer writes instead.
_SWAPS: dict[type, type] = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mod,
                            ast.Mod: ast.FloorDiv, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE,
                            ast.LtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
_CALL_SWAPS = {"max": "min", "min": "max"}
_WORDS = ("", "a", "ab", "cat", "code", "hello", "python", "sandbox", "templates", "calibration")


def template_items() -> list[dict]:
    """Every templated problem: {"id" (= the spec), "prompt" (the spec), "entry_point": "f", "tests" (3 asserts),
    "prefix": "", "setup": "", "answer" (the gold function, one line)}, in a fixed order."""
    return [dict(item) for item in _items()]


@functools.lru_cache(maxsize=1)
def _items() -> tuple[dict, ...]:
    items = []
    for args, phrase, expr in _problems():
        spec = f"f({', '.join(args)}) returns {phrase}"
        gold = one_line(args, expr)
        tests = _tests(spec, args, gold)
        if tests is not None:
            items.append({"id": spec, "prompt": spec, "entry_point": "f", "tests": tests, "prefix": "", "setup": "",
                          "answer": gold})
    return tuple(items)


def _problems() -> list[tuple[tuple[str, ...], str, str]]:
    """(argument names, English phrase, Python expression) of every problem, family by family."""
    out: list[tuple[tuple[str, ...], str, str]] = []
    x, xy, s, xs = ("x",), ("x", "y"), ("s",), ("xs",)

    def consts(op: str, lo: int = 1) -> range:
        return range(2, 21) if op == "*" else range(lo, 21)

    for word, op in OPS.items():
        out += [(x, f"x {word} {a}", f"x {op} {a}") for a in consts(op)]
        for word2, op2 in OPS.items():
            grouped = op2 == "*" and op != "*"  # the phrase reads left to right; brackets say so
            out += [(x, f"(x {word} {a}) {word2} {b}" if grouped else f"x {word} {a} {word2} {b}",
                     f"(x {op} {a}) {op2} {b}" if grouped else f"x {op} {a} {op2} {b}")
                    for a in consts(op) for b in consts(op2)]
            out += [(xy, f"(x {word} y) {word2} {a}" if grouped else f"x {word} y {word2} {a}",
                     f"(x {op} y) {op2} {a}" if grouped else f"x {op} y {op2} {a}") for a in consts(op2)]
        out += [(x, f"x squared {word} {a}", f"x * x {op} {a}") for a in consts(op)]
        out += [(s, f"the length of s {word} {a}", f"len(s) {op} {a}") for a in consts(op)]
        out += [(xs, f"the sum of xs {word} {a}", f"sum(xs) {op} {a}") for a in consts(op)]
        out += [(xs, f"the length of xs {word} {a}", f"len(xs) {op} {a}") for a in consts(op)]
        for most, fn in (("largest", "max"), ("smallest", "min")):
            out += [(xs, f"the {most} item of xs {word} {a}", f"{fn}(xs) {op} {a}") for a in consts(op)]
            out += [(xy, f"the {most} of x and y {word} {a}", f"{fn}(x, y) {op} {a}") for a in consts(op)]
    out += [(x, f"x mod {a}", f"x % {a}") for a in range(2, 21)]
    out += [(x, f"x floor-divided by {a}", f"x // {a}") for a in range(2, 21)]
    out += [(x, f"whether x is {word} {a}", f"x {op} {a}") for word, op in COMPARISONS.items() for a in range(21)]
    out += [(x, f"the {most} of x and {a}", f"{fn}(x, {a})") for most, fn in (("larger", "max"), ("smaller", "min"))
            for a in range(21)]
    out += [(x, f"the distance from x to {a}", f"abs(x - {a})") for a in range(1, 21)]
    out += [(s, f"s repeated {a} times", f"s * {a}") for a in range(2, 10)]
    out += [(s, f"the first {a} letters of s", f"s[:{a}]") for a in range(1, 10)]
    out += [(s, f"the last {a} letters of s", f"s[-{a}:]") for a in range(1, 10)]
    out += [(xs, f"item {a} of xs", f"xs[{a}]") for a in range(6)]
    return out


def one_line(args: tuple[str, ...] | list[str], expr: str) -> str:
    """The canonical one-line function: `def f(x): return <expr as ast.unparse writes it>`."""
    return f"def f({', '.join(args)}): return {ast.unparse(ast.parse(expr, mode='eval').body)}"


@functools.lru_cache(maxsize=8192)
def near_misses(code: str) -> tuple[str, ...]:
    """Every one-edit wrong version of a one-line function: one integer constant off by one (either way), or one
    operator or max/min swapped (_SWAPS); deduplicated, the code itself excluded, in a fixed order.

    >>> near_misses("def f(x): return x * 3")
    ('def f(x): return x + 3', 'def f(x): return x * 2', 'def f(x): return x * 4')
    """
    try:
        fn = ast.parse(code).body[0]
        args, expr = ", ".join(a.arg for a in fn.args.args), fn.body[0].value
    except (SyntaxError, IndexError, AttributeError):
        raise LayerscoutError(f"not a one-line templated function: {code!r}") from None
    out: dict[str, None] = {}
    for node, attr, value in _edits(expr):
        old = getattr(node, attr)
        setattr(node, attr, value)
        out.setdefault(f"def f({args}): return {ast.unparse(expr)}")
        setattr(node, attr, old)
    out.pop(code, None)
    return tuple(out)


def _edits(expr: ast.expr) -> list[tuple[ast.AST, str, Any]]:
    """The near-miss edits of an expression tree: (node, attribute, new value), one node changed per edit."""
    out: list[tuple[ast.AST, str, Any]] = []
    for n in ast.walk(expr):
        if isinstance(n, ast.Constant) and type(n.value) is int:
            out += [(n, "value", n.value + d) for d in (-1, 1)]
        elif isinstance(n, ast.BinOp) and type(n.op) in _SWAPS:
            out.append((n, "op", _SWAPS[type(n.op)]()))
        elif isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _SWAPS:
            out.append((n, "ops", [_SWAPS[type(n.ops[0])]()]))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _CALL_SWAPS:
            out.append((n.func, "id", _CALL_SWAPS[n.func.id]))
    return out


# ---------------------------------------------------------------------- tests


def _tests(spec: str, args: tuple[str, ...], gold: str) -> list[str] | None:
    """NUM_TESTS asserts on distinct inputs that the gold function passes and every near miss fails at least once
    (inputs drawn by a generator seeded by the spec); None when TRIES draws find none. The functions are this
    module's own templates, compiled here (no completion ever runs outside the sandbox)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(spec.encode()).digest()[:8], "big"))
    f, *misses = _compile([gold, *near_misses(gold)])
    near = sorted({c + d for c in _int_constants(gold) for d in (-1, 0, 1)})
    for _ in range(TRIES):
        inputs = [tuple(_draw(a, rng, near) for a in args) for _ in range(NUM_TESTS)]
        if len({repr(i) for i in inputs}) < NUM_TESTS:
            continue
        outputs = [_call(f, i) for i in inputs]
        if any(o is _RAISED for o in outputs):
            continue
        if all(any(_call(m, i) != o for i, o in zip(inputs, outputs)) for m in misses):
            return [f"assert f({', '.join(map(repr, i))}) == {o!r}" for i, o in zip(inputs, outputs)]
    return None


_RAISED = object()


def _call(f: Callable, inputs: tuple) -> Any:
    try:
        return f(*inputs)
    except Exception:  # a near miss may index out of range: that differs from the gold output
        return _RAISED


def _compile(functions: list[str]) -> list[Callable]:
    """The `f` of each one-line function, compiled at once (one compile per problem is most of the build time)."""
    source = "\n".join(code.replace("def f(", f"def f{i}(", 1) for i, code in enumerate(functions))
    namespace: dict[str, Any] = {}
    exec(compile(source, "<template>", "exec"), namespace)  # noqa: S102 - this module's own templates
    return [namespace[f"f{i}"] for i in range(len(functions))]


def _int_constants(code: str) -> list[int]:
    return [n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and type(n.value) is int]


def _draw(arg: str, rng: random.Random, near: list[int]) -> Any:
    """One input for an argument: ints near the function's constants half of the time (where a comparison's near
    miss differs), else in -5..20; a short word for s; a list of 1-7 ints in -9..20 for xs."""
    if arg == "s":
        return rng.choice(_WORDS)
    if arg == "xs":
        return [rng.randint(-9, 20) for _ in range(rng.randint(1, 7))]
    return rng.choice(near) if near and rng.random() < 0.5 else rng.randint(-5, 20)
