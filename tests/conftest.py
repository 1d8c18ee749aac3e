"""Shared fixtures. Multi-device tests need fake CPU devices, set before jax is imported.

The suite runs on the CPU by default (``JAX_PLATFORMS=cpu`` with 4 fake devices). On an accelerator
run it with the platform named, e.g. ``JAX_PLATFORMS=cuda pytest ...``: tests marked
``@pytest.mark.devices(n)`` are then skipped, with the reason, when fewer than ``n`` devices are
visible (one GPU), instead of failing.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("devices")
    if marker is None:
        return
    need = int(marker.args[0]) if marker.args else 2
    import jax

    have = jax.local_device_count()
    if have < need:
        platform = jax.local_devices()[0].platform
        pytest.skip(f"needs {need} local devices, {have} {platform} device(s) visible "
                    f"(JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')}); on the CPU the suite fakes 4")


@pytest.fixture(scope="session")
def colin27_files():
    """The verified Colin27 files in the user cache (``apt-get download`` once); skipped only on a
    machine that has neither a cached copy nor apt-get."""
    import shutil

    from jaxmed.data import colin27
    from jaxmed.errors import DataFetchError

    try:
        return colin27.fetch(quiet=True)
    except DataFetchError:
        if shutil.which("apt-get") is None:
            pytest.skip("Colin27 is not cached and this machine has no apt-get to download mricron-data")
        raise


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
