"""The AFIDs anatomical fiducials on the MNI152NLin2009cAsym 1 mm T1 template.

32 expert landmarks (AC, PC, pineal gland, genu/splenium of the corpus callosum, ...) in world RAS
mm, MIT-licensed, shipped inside the PyPI wheel ``afids-cnn==0.2.1``. :func:`fetch` downloads that
wheel with ``pip download --no-deps``, extracts the template and its ``.fcsv`` into the cache
directory and verifies SHA-256 checksums; it is a no-op when the verified files are present.
:func:`load` returns them as a (:class:`Volume`, :class:`Landmarks`) pair.

Cache directory: ``$JAXMED_DATA/afids`` if ``JAXMED_DATA`` is set, else the platform user cache
(``~/.cache/jaxmed/afids`` on Linux).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import platformdirs

from jaxmed.errors import DataFetchError

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


def data_root() -> Path:
    """Root of jaxmed's data cache: ``$JAXMED_DATA`` or the platform user cache directory."""
    env = os.environ.get("JAXMED_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("jaxmed"))


def cache_dir() -> Path:
    """Directory holding the two AFIDs files."""
    return data_root() / "afids"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def paths() -> dict[str, Path]:
    """Where the template (``"template"``) and landmark file (``"landmarks"``) live in the cache."""
    return {key: cache_dir() / name for key, (name, _) in FILES.items()}


def verify() -> dict[str, Path]:
    """Check the cached files exist and match their checksums; return their paths.

    Raises :class:`DataFetchError` saying how to get or repair the data otherwise.
    """
    found = paths()
    for key, (name, digest) in FILES.items():
        p = found[key]
        if not p.exists():
            raise DataFetchError(
                f"{p}: AFIDs data not found. Fetch it with `jaxmed data fetch afids` (needs access to PyPI), "
                f"or on another machine run it and copy {cache_dir()} here (or point $JAXMED_DATA at a copy)."
            )
        got = sha256(p)
        if got != digest:
            raise DataFetchError(
                f"{p}: corrupt AFIDs file (SHA-256 {got[:12]}..., expected {digest[:12]}...). "
                f"Re-fetch with `jaxmed data fetch afids --force`."
            )
    return found


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", WHEEL_REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataFetchError(f"could not run pip to download {WHEEL_REQUIREMENT}: {e}") from None
    wheel = dest / WHEEL_NAME
    if proc.returncode != 0 or not wheel.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataFetchError(
            f"could not download {WHEEL_REQUIREMENT} with pip (offline?): {' | '.join(tail)}. "
            f"To get the data offline: download {WHEEL_NAME} elsewhere and run "
            f"`jaxmed data fetch afids --wheel PATH`, or copy a filled {cache_dir()} here."
        )
    return wheel


def _extract(wheel: Path, target: Path) -> None:
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        raise DataFetchError(f"{wheel}: wheel checksum {got[:12]}... does not match {WHEEL_REQUIREMENT} ({WHEEL_SHA256[:12]}...)")
    target.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in FILES.values():
                # a unique temporary name + atomic rename: concurrent fetches never see half a file
                fd, tmp_name = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=target)
                tmp = Path(tmp_name)
                with zf.open(RESOURCE_DIR + name) as src, os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha256(tmp) != digest:
                    tmp.unlink()
                    raise DataFetchError(f"{wheel}: extracted {name} fails its checksum")
                tmp.replace(target / name)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataFetchError(f"{wheel}: not a valid {WHEEL_REQUIREMENT} wheel ({e})") from None


def fetch(*, force: bool = False, wheel: str | Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Make the verified AFIDs files available in the cache and return their paths.

    A no-op when they are present and verified (unless ``force``). A cached file that fails its
    checksum is replaced (it is jaxmed's own cache, never a user file). ``wheel``: use a local copy
    of the wheel instead of downloading.
    """
    if not force:
        try:
            return verify()
        except DataFetchError:
            pass
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.exists():
            raise DataFetchError(f"{wheel}: wheel file not found")
        _extract(wheel, cache_dir())
    else:
        log(f"jaxmed: downloading {WHEEL_REQUIREMENT} (13.7 MB) with pip into {cache_dir()} ...")
        with tempfile.TemporaryDirectory(prefix="jaxmed-afids-") as tmp:
            _extract(_download_wheel(Path(tmp)), cache_dir())
    return verify()


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
