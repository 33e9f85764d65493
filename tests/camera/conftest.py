"""Fixtures for the camera tests."""

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    # Distinct, reproducible stream per test (seeded by the test's name).
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))
