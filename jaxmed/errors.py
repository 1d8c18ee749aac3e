"""Exceptions raised by jaxmed.

Every error a user can cause with bad input derives from :class:`JaxmedError`, names the file or
object at fault and says what is wrong with it, and is raised before any JIT compilation.
"""

from __future__ import annotations


class JaxmedError(Exception):
    """Base class of every error jaxmed raises on bad input."""


class ImageError(JaxmedError):
    """An image file that cannot be read or is unusable (missing, not NIfTI, 2D/4D, NaN, singular affine)."""


class LandmarkError(JaxmedError):
    """A landmark file or landmark set that is malformed, lacks a label, or lies outside an image."""


class DataFetchError(JaxmedError):
    """A data set that cannot be downloaded, or whose cached copy is corrupt."""


class ConfigError(JaxmedError):
    """A configuration that names unknown keys, has wrong types or disagrees with the data."""


class OverwriteError(JaxmedError):
    """Refusal to overwrite a file or directory the user wrote, without an explicit flag."""


def check_writable(path, overwrite: bool) -> None:
    """Raise :class:`OverwriteError` if ``path`` exists and ``overwrite`` is false."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not overwrite:
        raise OverwriteError(f"{p}: already exists; pass overwrite=True (CLI: --overwrite) to replace it")
