"""Shared test set-up: hypothesis profile, backend reset, the shared data folder."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tinyvgg import backend

settings.register_profile("ci", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _cpu_backend_and_seed():
    """Every test starts on the CPU with seed 0 and leaves the CPU selected."""
    backend.use("cpu")
    backend.seed(0)
    yield
    backend.use("cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def shared_data():
    """``../shared/data`` beside the checkout, or a skip that says it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not present (development data is optional)")
    return SHARED_DATA
