"""Reading and writing landmark files.

Four formats, chosen by the file name's suffix:

``.fcsv``
    3D Slicer Markups fiducial CSV. A header of ``#`` lines, then one point per row::

        # Markups fiducial file version = 4.11
        # CoordinateSystem = LPS
        # columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
        1,0.231,-2.93275,-4.899,0,0,0,1,1,1,0,AC,,

    ``# CoordinateSystem`` is ``RAS``/``LPS`` (Slicer 4.11+) or ``0``/``1`` (Slicer 4.x, meaning RAS
    and LPS). A file without that line is read as RAS, as Slicer does for files written before the
    line existed. Without a ``# columns`` line the standard column order above is used. Fields
    containing commas are double-quoted, as Slicer writes them.
``.mrk.json``
    3D Slicer Markups JSON: ``markups[0].coordinateSystem`` (``"RAS"``/``"LPS"``, RAS if absent, as in
    Slicer) and ``markups[0].controlPoints[*]`` with ``label``, ``description`` and ``position``
    (``[x, y, z]`` mm). Control points without a defined position (``positionStatus`` other than
    ``"defined"``, or no ``position``) are skipped with a warning. A ``.json`` file whose top level
    has a ``markups`` key is read the same way.
``.csv``
    A header row naming at least ``label,x,y,z`` (any order, case-insensitive), one point per row;
    an optional ``description`` (or ``desc``) column is kept, other columns are ignored. Coordinates
    are RAS unless a leading comment line says ``# coordinate_system = LPS``.
``.json``
    jaxmed's own format, an object::

        {"coordinate_system": "RAS",
         "units": "mm",
         "landmarks": {"AC": [0.1, 2.9, -4.9], "PC": [0.2, -25.1, -2.2]},
         "descriptions": {"AC": "anterior commissure"}}

    ``coordinate_system`` is ``"RAS"`` or ``"LPS"`` (RAS if absent); ``units`` must be ``"mm"`` if
    present; ``descriptions`` is optional and may name a subset of the landmarks. Order is kept.

Whatever the file's convention, :func:`read_landmarks` returns world RAS millimetres, converting LPS
by negating x and y. Every problem with a file raises :class:`jaxmed.errors.LandmarkError` whose
message starts with the file's path.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from jaxmed.data.geometry import LPS_TO_RAS, apply_affine
from jaxmed.data.landmarks import Landmarks
from jaxmed.errors import LandmarkError, check_writable

__all__ = ["read_landmarks", "write_landmarks", "FCSV_COLUMNS", "MARKUPS_SCHEMA"]

FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID")
"""The standard column order of a Slicer ``.fcsv`` file (used when the header has no columns line)."""

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
"""The ``@schema`` written into ``.mrk.json`` files (the one Slicer 5 writes)."""

FCSV_VERSION = "4.11"
LABEL_FIELDS = ("auto", "label", "desc")
COORDINATE_SYSTEMS = ("RAS", "LPS")
_SLICER_NUMERIC_SYSTEMS = {"0": "RAS", "1": "LPS"}
_FORMATS = ("fcsv", "mrk.json", "csv", "json")


class _PointTable(NamedTuple):
    """Points as a file stores them, before conversion to :class:`Landmarks`.

    labels / descriptions: ``n`` strings each. positions: ``(n, 3)`` float64 mm in
    ``coordinate_system`` (``"RAS"`` or ``"LPS"``).
    """

    labels: list[str]
    descriptions: list[str]
    positions: np.ndarray
    coordinate_system: str


# --------------------------------------------------------------------------------------------------
# public API


def read_landmarks(path, *, label_field: str = "auto") -> Landmarks:
    """Read a landmark file (``.fcsv``, ``.mrk.json``, ``.csv`` or ``.json``; see the module docstring).

    Args:
      path: the file.
      label_field: which per-point text becomes :attr:`Landmarks.labels` for formats that carry both a
        label and a description (``.fcsv``, ``.mrk.json``; ``.csv`` / ``.json`` with descriptions):
        ``"label"``, ``"desc"``, or ``"auto"``, which takes the descriptions when every label is an
        integer string (Slicer's default numbering, e.g. AFIDs files label points ``1..32`` and
        name them in ``desc``) and the descriptions are non-empty and unique, and the labels
        otherwise. The field not chosen becomes :attr:`Landmarks.descriptions`.

    Returns:
      :class:`Landmarks` with positions ``(n, 3)`` float64 in world RAS mm and ``source`` = the path.

    Raises:
      LandmarkError: missing, empty or malformed file, unknown suffix or coordinate system, missing
        columns, non-numeric coordinates, no points, duplicate labels.
    """
    p = Path(path)
    if label_field not in LABEL_FIELDS:
        raise LandmarkError(f"{p}: label_field must be one of {LABEL_FIELDS}, got {label_field!r}")
    parse = _PARSERS[_format_of(p)]
    table = parse(_read_text(p), str(p))
    return _to_landmarks(table, label_field, str(p))


def write_landmarks(landmarks: Landmarks, path, *, coordinate_system: str = "RAS", overwrite: bool = False) -> Path:
    """Write ``landmarks`` (world RAS mm) to ``path`` in the format its suffix names.

    Args:
      landmarks: the points to write; at least one.
      path: ``.fcsv`` (Slicer 5 style, version 4.11 header), ``.mrk.json``, ``.csv`` or ``.json``.
      coordinate_system: ``"RAS"`` or ``"LPS"``: the convention of the coordinates in the file
        (recorded in the file so that :func:`read_landmarks` and Slicer convert back).
      overwrite: replace an existing file; without it an existing file raises
        :class:`jaxmed.errors.OverwriteError` and is left untouched.

    Coordinates are written with Python's shortest round-trip float repr, so reading the file back
    gives bit-identical RAS positions. The file is written to a temporary sibling and renamed into
    place, so a failed write never leaves a half-written file.

    Returns:
      The path written.
    """
    p = Path(path)
    system = _check_system(coordinate_system, str(p))
    fmt = _format_of(p)
    check_writable(p, overwrite)
    if len(landmarks) == 0:
        raise LandmarkError(f"{p}: refusing to write an empty landmark set")
    positions = _ras_to(system, landmarks.positions)
    table = _PointTable(list(landmarks.labels), list(landmarks.descriptions), positions, system)
    _write_text_atomic(p, _FORMATTERS[fmt](table))
    return p


# --------------------------------------------------------------------------------------------------
# shared helpers


def _format_of(path: Path) -> str:
    """The format name (one of ``_FORMATS``) for a path's suffix, or :class:`LandmarkError`."""
    name = path.name.lower()
    for fmt in _FORMATS:  # "mrk.json" is tested before "json"
        if name.endswith("." + fmt):
            return fmt
    raise LandmarkError(
        f"{path}: unknown landmark file suffix {''.join(path.suffixes) or '(none)'!r}; "
        f"expected one of {', '.join('.' + f for f in _FORMATS)}"
    )


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, a leading BOM dropped); :class:`LandmarkError` if missing or empty."""
    if not path.exists():
        raise LandmarkError(f"{path}: landmark file not found")
    if not path.is_file():
        raise LandmarkError(f"{path}: is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LandmarkError(f"{path}: cannot read landmark file: {e}") from None
    if not text.strip():
        raise LandmarkError(f"{path}: file is empty")
    return text


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_system(value, source: str, numeric: bool = False) -> str:
    """Normalise a coordinate-system value to ``"RAS"``/``"LPS"``.

    ``numeric`` also accepts Slicer 4.x's ``0`` (RAS) and ``1`` (LPS).
    """
    text = str(value).strip().upper()
    if numeric and text in _SLICER_NUMERIC_SYSTEMS:
        return _SLICER_NUMERIC_SYSTEMS[text]
    if text in COORDINATE_SYSTEMS:
        return text
    expected = "RAS, LPS, 0 (RAS) or 1 (LPS)" if numeric else "RAS or LPS"
    shown = value.strip() if isinstance(value, str) else value
    raise LandmarkError(f"{source}: unknown coordinate system {shown!r}; expected {expected}")


def _ras_to(system: str, positions: np.ndarray) -> np.ndarray:
    """Convert ``(n, 3)`` mm between RAS and ``system`` (the LPS flip is its own inverse)."""
    return apply_affine(LPS_TO_RAS, positions) if system == "LPS" else np.asarray(positions, dtype=np.float64)


def _number(value, source: str, where: str, axis: str) -> float:
    """One coordinate as a finite float; :class:`LandmarkError` naming ``where`` (row / label) if not."""
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise LandmarkError(f"{source}: {where}: coordinate {axis} = {value!r} is not a number") from None
    if not np.isfinite(x):
        raise LandmarkError(f"{source}: {where}: coordinate {axis} = {value!r} is not finite")
    return x


def _point(values, source: str, where: str) -> list[float]:
    """Three coordinates ``(x, y, z)`` as floats, each checked by :func:`_number`."""
    return [_number(v, source, where, axis) for v, axis in zip(values, "xyz")]


def _choose_labels(table: _PointTable, label_field: str) -> tuple[list[str], list[str]]:
    """``(labels, descriptions)`` for :class:`Landmarks` according to ``label_field``."""
    labels, descs = table.labels, table.descriptions
    if label_field == "auto":
        numbered = all(re.fullmatch(r"[+-]?[0-9]+", l.strip()) for l in labels)
        named = all(d.strip() for d in descs) and len(set(descs)) == len(descs)
        label_field = "desc" if numbered and named else "label"
    return (descs, labels) if label_field == "desc" else (labels, descs)


def _to_landmarks(table: _PointTable, label_field: str, source: str) -> Landmarks:
    """World-RAS :class:`Landmarks` from a parsed table; :class:`LandmarkError` if it has no points."""
    if not table.labels:
        raise LandmarkError(f"{source}: no landmarks in file")
    labels, descs = _choose_labels(table, label_field)
    if label_field == "desc" and not all(d.strip() for d in labels):
        raise LandmarkError(f"{source}: label_field='desc' but some points have an empty description")
    return Landmarks(tuple(labels), _ras_to(table.coordinate_system, table.positions), tuple(descs), source)


def _table(rows: list[tuple[str, str, list[float]]], system: str) -> _PointTable:
    """A :class:`_PointTable` from ``(label, description, [x, y, z])`` rows."""
    positions = np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 3)
    return _PointTable([r[0] for r in rows], [r[1] for r in rows], positions, system)


def _coordinate_texts(xyz: np.ndarray) -> list[str]:
    """``(3,)`` mm as Python's shortest round-trip float reprs (reading them back is bit exact)."""
    return [repr(float(v)) for v in xyz]


def _csv_line(fields) -> str:
    """One CSV line (no newline), quoting fields that contain commas or quotes, as Slicer does."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# .fcsv


def _parse_fcsv(text: str, source: str) -> _PointTable:
    """Parse a Slicer Markups fiducial CSV (header lines ``# key = value``, then rows)."""
    system, columns = "RAS", FCSV_COLUMNS
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key = key.strip().lower()
            if key == "coordinatesystem":
                system = _check_system(value, source, numeric=True)
            elif key == "columns":
                columns = tuple(c.strip() for c in value.split(","))
                _require_columns(columns, ("x", "y", "z", "label"), source, "'# columns' line")
        elif line.strip():
            rows.append(_fcsv_row(line, lineno, columns, source))
    return _table(rows, system)


def _fcsv_row(line: str, lineno: int, columns: tuple[str, ...], source: str):
    """``(label, desc, [x, y, z])`` from one ``.fcsv`` data line."""
    rec = _record(next(csv.reader([line])), columns, ("x", "y", "z", "label"), source, lineno)
    where = f"line {lineno} (label {rec['label']!r})"
    return rec["label"], rec.get("desc", ""), _point([rec["x"], rec["y"], rec["z"]], source, where)


def _record(fields: list[str], columns, required, source: str, lineno: int) -> dict[str, str]:
    """Map a row's ``fields`` to ``columns``; :class:`LandmarkError` if it stops before a ``required`` one."""
    needed = max(list(columns).index(c) for c in required) + 1
    if len(fields) < needed:
        raise LandmarkError(
            f"{source}: line {lineno}: {len(fields)} fields, expected at least {needed} ({','.join(columns[:needed])})"
        )
    return dict(zip(columns, fields))


def _require_columns(columns, required, source: str, what: str) -> None:
    """:class:`LandmarkError` listing the ``required`` names missing from ``columns``."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise LandmarkError(f"{source}: {what} lacks column(s) {missing}; it has {list(columns)}")


def _format_fcsv(table: _PointTable) -> str:
    """Slicer 5 style ``.fcsv`` text with the standard columns."""
    lines = [
        f"# Markups fiducial file version = {FCSV_VERSION}",
        f"# CoordinateSystem = {table.coordinate_system}",
        "# columns = " + ",".join(FCSV_COLUMNS),
    ]
    for i, (label, desc, xyz) in enumerate(zip(table.labels, table.descriptions, table.positions)):
        # id, x, y, z, orientation as angle-axis (0 degrees about z: identity), vis, sel, lock, label, desc, node
        lines.append(_csv_line([i + 1, *_coordinate_texts(xyz), 0, 0, 0, 1, 1, 1, 0, label, desc, ""]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# .csv


def _parse_csv(text: str, source: str) -> _PointTable:
    """Parse a ``label,x,y,z`` CSV with a header row and optional leading ``#`` comment lines.

    Labels and descriptions are stripped of surrounding spaces (hand-written ``AC, 1, 2, 3``).
    """
    lines = text.splitlines()
    n_comments = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    system = "RAS"
    for line in lines[:n_comments]:
        key, _, value = line[1:].partition("=")
        if key.strip().lower().replace("_", "") == "coordinatesystem":
            system = _check_system(value, source)
    reader = csv.reader(lines[n_comments:])
    header = [h.strip().lower() for h in next(reader, [])]
    required = ("label", "x", "y", "z")
    _require_columns(header, required, source, "header row")
    desc_col = next((c for c in ("description", "desc") if c in header), None)
    rows = []
    for lineno, fields in enumerate(reader, start=n_comments + 2):
        if not any(f.strip() for f in fields):
            continue
        rec = _record(fields, header, required + ((desc_col,) if desc_col else ()), source, lineno)
        where = f"line {lineno} (label {rec['label']!r})"
        desc = rec.get(desc_col, "").strip()
        rows.append((rec["label"].strip(), desc, _point([rec["x"], rec["y"], rec["z"]], source, where)))
    return _table(rows, system)


def _format_csv(table: _PointTable) -> str:
    """``label,x,y,z[,description]`` CSV; LPS files start with a ``# coordinate_system = LPS`` line."""
    with_desc = any(table.descriptions)
    lines = [] if table.coordinate_system == "RAS" else [f"# coordinate_system = {table.coordinate_system}"]
    lines.append("label,x,y,z" + (",description" if with_desc else ""))
    for label, desc, xyz in zip(table.labels, table.descriptions, table.positions):
        lines.append(_csv_line([label, *_coordinate_texts(xyz), *([desc] if with_desc else [])]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# .json / .mrk.json


def _load_json(text: str, source: str) -> dict:
    """The top-level JSON object; :class:`LandmarkError` on invalid JSON or a non-object."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LandmarkError(f"{source}: invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise LandmarkError(f"{source}: expected a JSON object at the top level, got {type(doc).__name__}")
    return doc


def _dump_json(doc: dict) -> str:
    """Indented JSON text with arrays of numbers kept on one line (``"position": [1.5, -2.0, 3.25]``).

    Only multi-line arrays are joined; JSON strings never span lines, so labels are left alone.
    """
    text = json.dumps(doc, indent=4, ensure_ascii=False)
    return re.sub(r"\[\n\s*([-+0-9.eE,\s]*?)\n\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _parse_mrk_json(text: str, source: str) -> _PointTable:
    """Parse a Slicer Markups JSON file (the first markup of ``markups``)."""
    return _mrk_table(_load_json(text, source), source)


def _mrk_table(doc: dict, source: str) -> _PointTable:
    """Points of ``doc["markups"][0]``, skipping (with a warning) those without a defined position."""
    markups = doc.get("markups")
    if not isinstance(markups, list) or not markups or not isinstance(markups[0], dict):
        raise LandmarkError(f"{source}: no 'markups' list with at least one markup object")
    markup = markups[0]
    if markup.get("coordinateUnits", "mm") != "mm":
        raise LandmarkError(f"{source}: coordinateUnits {markup['coordinateUnits']!r} is not supported (only mm)")
    system = _check_system(markup.get("coordinateSystem", "RAS"), source)
    points = markup.get("controlPoints", [])
    if not isinstance(points, list):
        raise LandmarkError(f"{source}: 'controlPoints' must be a list")
    rows, skipped = [], []
    for i, cp in enumerate(points):
        if not isinstance(cp, dict):
            raise LandmarkError(f"{source}: controlPoints[{i}] is not an object")
        label = str(cp.get("label", ""))
        if "position" not in cp or cp.get("positionStatus", "defined") != "defined":
            skipped.append(label or f"#{i}")
            continue
        rows.append((label, str(cp.get("description", "")), _xyz_list(cp["position"], source, f"controlPoints[{i}] (label {label!r})")))
    if skipped:
        warnings.warn(f"{source}: skipped control points without a defined position: {', '.join(skipped)}", stacklevel=4)
    return _table(rows, system)


def _xyz_list(value, source: str, where: str) -> list[float]:
    """A JSON ``[x, y, z]`` as floats; :class:`LandmarkError` naming ``where`` if malformed."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise LandmarkError(f"{source}: {where}: position must be a list [x, y, z], got {value!r}")
    return _point(value, source, where)


def _parse_json(text: str, source: str) -> _PointTable:
    """Parse jaxmed's JSON format, or Slicer Markups JSON if the object has a ``markups`` key."""
    doc = _load_json(text, source)
    if "markups" in doc:
        return _mrk_table(doc, source)
    if doc.get("units", "mm") != "mm":
        raise LandmarkError(f"{source}: units {doc['units']!r} are not supported (only mm)")
    system = _check_system(doc.get("coordinate_system", "RAS"), source)
    points = doc.get("landmarks")
    if not isinstance(points, dict):
        raise LandmarkError(f"{source}: expected a 'landmarks' object mapping label -> [x, y, z]")
    descs = doc.get("descriptions", {})
    if not isinstance(descs, dict):
        raise LandmarkError(f"{source}: 'descriptions' must be an object mapping label -> text")
    rows = [(label, str(descs.get(label, "")), _xyz_list(xyz, source, f"landmark {label!r}")) for label, xyz in points.items()]
    return _table(rows, system)


def _format_json(table: _PointTable) -> str:
    """jaxmed's JSON format (see the module docstring)."""
    doc = {
        "coordinate_system": table.coordinate_system,
        "units": "mm",
        "landmarks": {l: [float(v) for v in xyz] for l, xyz in zip(table.labels, table.positions)},
    }
    if any(table.descriptions):
        doc["descriptions"] = {l: d for l, d in zip(table.labels, table.descriptions) if d}
    return _dump_json(doc)


def _format_mrk_json(table: _PointTable) -> str:
    """Slicer Markups JSON (one ``Fiducial`` markup) with the schema's standard fields."""
    # Identity orientation expressed in the file's system (Slicer flips its first two rows for LPS).
    orientation = np.diag([-1.0, -1.0, 1.0] if table.coordinate_system == "LPS" else [1.0, 1.0, 1.0])
    points = [
        {
            "id": str(i + 1),
            "label": label,
            "description": desc,
            "associatedNodeID": "",
            "position": [float(v) for v in xyz],
            "orientation": orientation.ravel().tolist(),
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, (label, desc, xyz) in enumerate(zip(table.labels, table.descriptions, table.positions))
    ]
    markup = {
        "type": "Fiducial",
        "coordinateSystem": table.coordinate_system,
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "controlPoints": points,
        "measurements": [],
    }
    return _dump_json({"@schema": MARKUPS_SCHEMA, "markups": [markup]})


_PARSERS: dict[str, Callable[[str, str], _PointTable]] = {
    "fcsv": _parse_fcsv,
    "mrk.json": _parse_mrk_json,
    "csv": _parse_csv,
    "json": _parse_json,
}
_FORMATTERS: dict[str, Callable[[_PointTable], str]] = {
    "fcsv": _format_fcsv,
    "mrk.json": _format_mrk_json,
    "csv": _format_csv,
    "json": _format_json,
}
