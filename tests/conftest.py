"""Shared fixtures. Multi-device tests need fake CPU devices, set before jax is imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def afids_data():
    """The real AFIDs template and landmarks (fetched once with pip into the user cache)."""
    from jaxmed.data import afids

    return afids.load()


@pytest.fixture(scope="session")
def afids_3mm():
    """The AFIDs template resampled to 3 mm (small enough for fast jitted tests)."""
    from jaxmed.data import afids

    return afids.load(spacing=3.0)
