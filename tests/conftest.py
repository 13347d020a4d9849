"""Shared fixtures: a small model organism built once per session (real SFT on the math task, partial
accuracy), loaded fresh for each test that needs one. Run the suite: pytest (slow checks: pytest -m slow)."""

import os
from pathlib import Path

import pytest

# Keep built organisms and converted GGUFs between local runs, inside the checkout (gitignored).
os.environ.setdefault("LAYERSCOUT_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


@pytest.fixture(scope="session")
def organism_path() -> Path:
    """The embedded default organism (8-layer Qwen3, SFT'd to partial accuracy): built once, then cached."""
    from layerscout.organisms import default_organism_path

    return default_organism_path(progress=False)


@pytest.fixture
def organism(organism_path):
    """(model, tokenizer) of the test organism, fresh weights for every test."""
    from layerscout.models import load_model

    return load_model(str(organism_path))


@pytest.fixture
def math_task():
    from layerscout.tasks import get_task

    return get_task("math")
