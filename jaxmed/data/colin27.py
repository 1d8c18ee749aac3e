"""Colin27, the MNI single-subject brain (one person, 27 averaged scans): its images, its AAL atlas and
its 32 AFIDs, fetched, verified and loaded (the data set behind ``data.source: colin27``,
:mod:`jaxmed.data.sources.colin27`).

Images: ``ch2.nii.gz`` (T1 with skull) and ``ch2bet.nii.gz`` (skull-stripped), 181 x 217 x 181,
1 mm, and the AAL atlas on the same grid (``aal.nii.gz``, 116 regions named in ``aal.nii.txt``),
all from the Debian package ``mricron-data`` (``usr/share/mricron/templates/``). :data:`DATASET`
downloads it with ``apt-get download`` (no root needed) or takes a local copy
(``jaxmed data fetch colin27 --deb PATH``), verifies the package's SHA-256, reads it with the
standard library (``ar`` container, then ``data.tar.xz``; no dpkg) and verifies each file.

Landmarks: the AFIDs anatomical fiducials placed on Colin27 by the AFIDs project, kept in this
package (``jaxmed/data/resources/colin27_afids.csv``, world RAS mm, same labels as the AFIDs
template).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

import numpy as np

from jaxmed.data.fetch import Dataset
from jaxmed.errors import ConfigError, DataFetchError

DEB_NAME = "mricron-data_1.2.20211006+dfsg-4_all.deb"

DATASET = Dataset(
    name="colin27", title="Colin27 (mricron-data)",
    files={"ch2": ("ch2.nii.gz", "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309"),
           "ch2bet": ("ch2bet.nii.gz", "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1"),
           "aal": ("aal.nii.gz", "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454"),
           "aal_names": ("aal.nii.txt", "1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e")},
    archive_kind="deb", archive_name=DEB_NAME,
    archive_sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
    member_dir="usr/share/mricron/templates/",
    download_cmd=("apt-get", "download", "mricron-data=1.2.20211006+dfsg-4"),
    offline_flag="--deb",
    how_to_get=(f"needs apt-get (Debian/Ubuntu); elsewhere download {DEB_NAME} from a Debian mirror "
                "(pool/main/m/mricron/) or run `apt-get download mricron-data` on a Debian machine"),
    license="mricron-data (Debian): Colin27 and AAL templates as distributed with MRIcron")

#: subject name of each image option
IMAGES = {"ch2": "colin27", "ch2bet": "colin27-bet"}
LANDMARK_RESOURCE = "colin27_afids.csv"


def fetch(*, force: bool = False, deb: str | Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Make the verified Colin27 and AAL files available in the cache; their paths by key
    (``ch2``, ``ch2bet``, ``aal``, ``aal_names``)."""
    return DATASET.fetch(force=force, archive=deb, quiet=quiet)


def landmarks():
    """The 32 AFIDs on Colin27 (:class:`Landmarks`, world RAS mm), from the package's resources."""
    from jaxmed.data.landmark_files import read_landmarks

    with importlib.resources.as_file(importlib.resources.files("jaxmed.data.resources") / LANDMARK_RESOURCE) as p:
        if not p.exists():
            raise DataFetchError(f"{p}: the Colin27 landmark file is missing from the jaxmed installation")
        lm = read_landmarks(p)
    return dataclasses.replace(lm, source="colin27_afids (AFIDs project)")


def load(image: str = "ch2", *, spacing: float | None = None, normalise: bool = True, download: bool = True):
    """``(volume, landmarks)``: one Colin27 image (``"ch2"`` with skull or ``"ch2bet"`` skull-stripped;
    RAS, 1 mm or resampled to ``spacing`` mm, percentile-normalised) and its 32 AFIDs (world RAS mm)."""
    from jaxmed.data.image_io import load_image

    if image not in IMAGES:
        raise ConfigError(f"Colin27 image {image!r}: expected one of {', '.join(IMAGES)}")
    files = fetch() if download else DATASET.verify()
    volume = load_image(files[image], spacing=spacing, normalise=normalise)
    lm = landmarks()
    lm.check_inside(volume)
    return volume, lm


def load_aal(spacing: float | None = None, *, download: bool = True):
    """The AAL atlas on the Colin27 grid: ``(volume, names)``.

    ``volume.data`` is ``(X, Y, Z)`` int16 region labels (0 = background, 1..116), RAS voxel order,
    1 mm or resampled to ``spacing`` mm by nearest neighbour (labels stay exact integers, never
    interpolated or normalised); ``names`` maps each label to its AAL name (``71: "Caudate_L"``).
    """
    from jaxmed.data.image_io import read_nifti, reorient_to_ras, resample_isotropic

    files = fetch() if download else DATASET.verify()
    volume = reorient_to_ras(read_nifti(files["aal"]))
    if spacing is not None:
        volume = resample_isotropic(volume, spacing, order=0)
    names = {}
    for line in files["aal_names"].read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    data = np.rint(volume.data)
    if not np.array_equal(data, volume.data):
        raise DataFetchError(f"{files['aal']}: AAL labels are not integers")
    return volume.replace(data=data.astype(np.int16)), names
