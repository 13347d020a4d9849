"""Shared fixtures: a small model organism built once per session (real SFT on the math task, partial
accuracy), loaded fresh for each test that needs one. Run the suite: pytest (slow checks: pytest -m slow)."""

import os
from pathlib import Path

import pytest

# Keep built organisms and converted GGUFs between local runs, inside the checkout (gitignored).
os.environ.setdefault("LAYERSCOUT_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))


TEST_ORGANISM = dict(arch="qwen3", num_layers=4, hidden_size=64, seed=0)


@pytest.fixture(scope="session")
def organism_path() -> Path:
    from layerscout.organisms import OrganismConfig, default_organism_path

    return default_organism_path(OrganismConfig(**TEST_ORGANISM), progress=False)


@pytest.fixture
def organism(organism_path):
    """(model, tokenizer) of the test organism, fresh weights for every test."""
    from layerscout.models import load_model

    return load_model(str(organism_path))


@pytest.fixture
def math_task():
    from layerscout.tasks import get_task

    return get_task("math")
