"""Shared fixtures: a small model organism built once per session (the default recipe, real noisy-label SFT on
the math task, cut to 6 layers and 800 steps so the suite stays fast), loaded fresh for each test that needs
one. Run the suite: pytest (slow checks, e.g. the full default organism: pytest -m slow)."""

import os
from pathlib import Path

import pytest

# Keep built organisms and converted GGUFs between local runs, inside the checkout (gitignored).
os.environ.setdefault("LAYERSCOUT_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


@pytest.fixture(scope="session")
def organism_path() -> Path:
    """A 6-layer Qwen3 organism of the default recipe (samples right answers sometimes): built once, then cached."""
    from layerscout.organisms import OrganismConfig, default_organism_path

    return default_organism_path(OrganismConfig(num_layers=6, max_steps=800), progress=False)


@pytest.fixture
def organism(organism_path):
    """(model, tokenizer) of the test organism, fresh weights for every test."""
    from layerscout.models import load_model

    return load_model(str(organism_path))


@pytest.fixture
def math_task():
    from layerscout.tasks import get_task

    return get_task("math")
