"""The AFIDs anatomical fiducials on the MNI152NLin2009cAsym 1 mm T1 template.

32 expert landmarks (AC, PC, pineal gland, genu/splenium of the corpus callosum, ...) in world RAS
mm, MIT-licensed, shipped inside the PyPI wheel ``afids-cnn==0.2.1``. :func:`fetch` downloads that
wheel with ``pip download --no-deps``, extracts the template and its ``.fcsv`` into the cache
directory and verifies SHA-256 checksums (the shared mechanism of :mod:`jaxmed.data.fetch`); it is a no-op when the verified
files are present.
:func:`load` returns them as a (:class:`Volume`, :class:`Landmarks`) pair.

Cache directory: ``$JAXMED_DATA/afids`` if ``JAXMED_DATA`` is set, else the platform user cache
(``~/.cache/jaxmed/afids`` on Linux).
"""

from __future__ import annotations

import subprocess  # noqa: F401  (tests replace subprocess.run to simulate being offline)
from pathlib import Path

from jaxmed.data.fetch import Dataset, data_root, sha256  # noqa: F401  (re-exported)

WHEEL_REQUIREMENT = "afids-cnn==0.2.1"
WHEEL_NAME = "afids_cnn-0.2.1-py3-none-any.whl"
WHEEL_SHA256 = "55434c4203e3950fd3f2069806c17b3e60a36bffdcc3753212858282124cc12d"
RESOURCE_DIR = "afids_cnn/resources/"
FILES = {
    "template": ("tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz", "1f27aabea9f7183dc0c69dafa71e1787b921ca778d655d9c1bf302b273d5627a"),
    "landmarks": ("tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv", "be67e25a94cacfaa417dcec9f171a224a077accc1d96e616a1737ef06aa359c8"),
}
LICENSE = "MIT (afids-cnn); template: MNI152NLin2009cAsym, see templateflow"

#: The AFIDs labels used by the landmark benchmarks (subsets for multi-agent configs).
CORE_LABELS = ("AC", "PC", "genu of CC", "splenium of CC", "pineal gland", "infracollicular sulcus")

DATASET = Dataset(
    name="afids", title="AFIDs", files=FILES, archive_kind="wheel", archive_name=WHEEL_NAME, archive_sha256=WHEEL_SHA256,
    member_dir=RESOURCE_DIR,
    download_cmd=("{python}", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", WHEEL_REQUIREMENT, "-d", "{dest}"),
    offline_flag="--wheel",
    how_to_get=f"needs access to PyPI; or download {WHEEL_NAME} elsewhere (`pip download --no-deps {WHEEL_REQUIREMENT}`)",
    license=LICENSE)


def cache_dir() -> Path:
    """Directory holding the two AFIDs files."""
    return DATASET.cache_dir()


def paths() -> dict[str, Path]:
    """Where the template (``"template"``) and landmark file (``"landmarks"``) live in the cache."""
    return DATASET.paths()


def verify() -> dict[str, Path]:
    """Check the cached files exist and match their checksums; return their paths.

    Raises :class:`DataFetchError` saying how to get or repair the data otherwise.
    """
    return DATASET.verify()


def _download_wheel(dest: Path) -> Path:
    return DATASET.download(dest)


def fetch(*, force: bool = False, wheel: str | Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Make the verified AFIDs files available in the cache and return their paths.

    A no-op when they are present and verified (unless ``force``). A cached file that fails its
    checksum is replaced (it is jaxmed's own cache, never a user file). ``wheel``: use a local copy
    of the wheel instead of downloading. See :mod:`jaxmed.data.fetch`.
    """
    return DATASET.fetch(force=force, archive=wheel, quiet=quiet)


def load(*, spacing: float | None = None, normalise: bool = True, download: bool = True):
    """The AFIDs template and its 32 landmarks.

    Returns ``(volume, landmarks)``: a RAS-ordered, normalised :class:`~jaxmed.data.volume.Volume`
    (1 mm, 193 x 229 x 193; resampled if ``spacing`` is given) and a
    :class:`~jaxmed.data.landmarks.Landmarks` with labels such as ``"AC"``, world RAS mm.
    ``download=False`` raises instead of fetching when the cache is empty.
    """
    from jaxmed.data.image_io import load_image
    from jaxmed.data.landmark_files import read_landmarks

    files = fetch(quiet=False) if download else verify()
    volume = load_image(files["template"], spacing=spacing, normalise=normalise)
    landmarks = read_landmarks(files["landmarks"])
    landmarks.check_inside(volume)
    return volume, landmarks
