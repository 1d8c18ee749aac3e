"""The T2-weighted MNI152NLin2009cAsym 1 mm template with the AFIDs: fetched, verified and loaded (the
data set behind ``data.source: mni-t2w``, :mod:`jaxmed.data.sources.mni_t2w`).

The image ships in the PyPI wheel ``autoafids==0.1.4`` (``autoafids/resources/``) next to the
AFIDs landmark file of the T1 template: both templates share one space, so the T1 template's 32
AFIDs are the T2w template's landmarks. :data:`DATASET` fetches the wheel with ``pip download
--no-deps`` (or takes a local copy: ``jaxmed data fetch mni-t2w --wheel PATH``) and verifies the
wheel's and each file's SHA-256 (:mod:`jaxmed.data.fetch`).
"""

from __future__ import annotations

from pathlib import Path

from jaxmed.data.fetch import Dataset

WHEEL_REQUIREMENT = "autoafids==0.1.4"
WHEEL_NAME = "autoafids-0.1.4-py3-none-any.whl"

DATASET = Dataset(
    name="mni-t2w", title="MNI152NLin2009cAsym T2w",
    files={"template": ("tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz", "6e39951e4478ff041f1290d31935dc05aa5425f9fd3f20ed57d4646f0d5be0ff"),
           "landmarks": ("tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv", "be67e25a94cacfaa417dcec9f171a224a077accc1d96e616a1737ef06aa359c8")},
    archive_kind="wheel", archive_name=WHEEL_NAME,
    archive_sha256="f949e0e1b01a01de122cd23fc8457444d455e50a7482cf4b2440f505778fcdbc",
    member_dir="autoafids/resources/",
    download_cmd=("{python}", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", WHEEL_REQUIREMENT, "-d", "{dest}"),
    offline_flag="--wheel",
    how_to_get=f"needs access to PyPI; or download {WHEEL_NAME} elsewhere (`pip download --no-deps {WHEEL_REQUIREMENT}`)",
    license="MIT (autoafids); template: MNI152NLin2009cAsym, see templateflow")


def fetch(*, force: bool = False, wheel: str | Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Make the verified T2w template and its landmark file available in the cache; their paths."""
    return DATASET.fetch(force=force, archive=wheel, quiet=quiet)


def load(*, spacing: float | None = None, normalise: bool = True, download: bool = True):
    """``(volume, landmarks)``: the T2w template (RAS, 1 mm, 193 x 229 x 193, or resampled to
    ``spacing`` mm; percentile-normalised) and the 32 AFIDs (world RAS mm)."""
    from jaxmed.data.image_io import load_image
    from jaxmed.data.landmark_files import read_landmarks

    files = fetch() if download else DATASET.verify()
    volume = load_image(files["template"], spacing=spacing, normalise=normalise)
    landmarks = read_landmarks(files["landmarks"])
    landmarks.check_inside(volume)
    return volume, landmarks
