"""Throughput of the crop and resample kernels against batch size, crop size and bank dtype.

Measures, in one process on one device:

* ``crop``: ``jit(vmap(crop_from_stack))`` over ``n`` random (volume, centre) pairs from a bank of
  padded volumes, against a Python loop of NumPy slicing into a preallocated output.
* ``resample``: ``jit(vmap(resample_window_from_stack))`` of ``D^3`` windows under random rotations
  (trilinear, float32 output), against ``scipy.ndimage.map_coordinates(order=1)`` per window.
* ``memcpy``: NumPy copy of a large array (GB/s), the bandwidth a crop (a strided copy) can at best
  reach. Reported throughput is bytes *of output* per second, and its fraction of memcpy.

Two JAX timings per row: *per call* (one jitted call per batch; the output buffer is allocated
fresh each call, and outputs above glibc's 32 MB mmap threshold are page-faulted in at a few GB/s)
and *in program* (R batches back to back in one ``fori_loop``, the way an environment rolled out
with ``lax.scan`` uses crops; the buffer is reused). Bandwidth and speed-up use the in-program
figure; the reference loops write into a preallocated output.

Timing: warm-up (compilation) excluded, ``block_until_ready``, median over repeats, rotating
through a few sets of random positions so that repeated calls do not hit the same cache lines.

Usage::

    python benchmarks/ops_throughput.py [--quick] [--out benchmarks/results/ops_throughput.json]

Writes the JSON, a PNG plot beside it, and prints a Markdown table.
"""

from __future__ import annotations

import functools
import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, machine_line, parser, rows_markdown, run_and_write, save_figure, start_sweep, sweep_result, timed  # noqa: E402

from jaxmed import ops  # noqa: E402

DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16, "uint8": np.uint8}


# ------------------------------------------------------------------ timing helpers


def median_time(call, arg_sets, min_time: float, min_reps: int = 3, max_reps: int = 200, max_total: float = 6.0) -> tuple[float, int]:
    """Median seconds of ``call(*args)`` (blocking), cycling through ``arg_sets``; the first call
    (compilation) is excluded. Stops after ``min_reps`` calls and ``min_time`` seconds, or after
    ``max_total`` seconds (at least one timed call); :func:`jaxmed.bench.timed`."""
    sets = itertools.cycle(arg_sets)
    return timed(lambda: jax.block_until_ready(call(*next(sets))), min_time, min_reps, max_reps, max_total=max_total)


def in_program(batched_fn):
    """``jit`` of ``R`` batches computed back to back inside one program (``fori_loop``, each batch
    written into the loop carry), as in an environment rolled out with ``lax.scan``: the output
    buffer is reused instead of being freshly allocated and page-faulted per call.
    Arguments: ``(bank, a, b)`` with ``a``, ``b`` stacked over a leading ``R`` axis."""

    @jax.jit
    def run_batches(bank, a, b):
        first = batched_fn(bank, a[0], b[0])
        return jax.lax.fori_loop(1, a.shape[0], lambda r, _: batched_fn(bank, a[r], b[r]), first)

    return run_batches


def positions(rng, n, n_vol, inner, k_sets):
    """``k_sets`` sets of ``n`` random volume indices ``(n,)`` and centres ``(n, 3)`` (int32)."""
    return [(rng.integers(0, n_vol, n).astype(np.int32), rng.integers(0, inner, (n, 3)).astype(np.int32)) for _ in range(k_sets)]


def window_affines(rng, n, inner, size, max_deg=30.0):
    """``(n, 4, 4)`` float32 affines: random rotation of a ``size^3`` grid about its centre, placed at
    a random centre so that most of the window is inside the unpadded grid."""
    rot = Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, (n, 3)), degrees=True).as_matrix()
    centre = rng.uniform(size / 2, inner - 1 - size / 2, (n, 3))
    a = np.tile(np.eye(4), (n, 1, 1))
    a[:, :3, :3] = rot
    a[:, :3, 3] = centre - rot @ np.full(3, (size - 1) / 2)
    return a.astype(np.float32)


# ------------------------------------------------------------------ the two ops


def numpy_crops(bank, idx, centres, size, margin, out):
    lo = centres + margin - size // 2
    for k in range(len(idx)):
        x, y, z = lo[k]
        out[k] = bank[idx[k], x : x + size, y : y + size, z : z + size]
    return out


def scipy_windows(bank, idx, affines, size, margin, out):
    o = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij"), 0).reshape(3, -1)
    for k in range(len(idx)):
        a = affines[k]
        coords = a[:3, :3] @ o + a[:3, 3:4] + margin  # padded index space; outside the grid -> 0
        out[k] = map_coordinates(bank[idx[k]], coords, order=1, mode="constant", cval=0.0, output=np.float32).reshape((size,) * 3)
    return out


def run(args) -> dict:
    rng = np.random.default_rng(0)
    sizes = args.sizes
    margin = ops.required_margin(max(sizes))
    padded = args.padded
    inner = padded - 2 * margin
    info, bw = start_sweep(args.memcpy_mb)

    base = rng.random((args.n_volumes, padded, padded, padded), dtype=np.float32)
    rows = []
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        bank_np = (base * 255).round().astype(np.uint8) if dname == "uint8" else base.astype(dtype)
        bank = jnp.asarray(bank_np)
        itemsize = np.dtype(dtype).itemsize
        for size in sizes:
            crop_fn = jax.jit(jax.vmap(functools.partial(ops.crop_from_stack, size=size, margin=margin), in_axes=(None, 0, 0)))
            res_fn = jax.jit(jax.vmap(functools.partial(ops.resample_window_from_stack, size=size, margin=margin), in_axes=(None, 0, 0)))
            crop_loop, res_loop = in_program(crop_fn), in_program(res_fn)
            per_item = {"crop": None, "resample": None}
            for n in args.batches:
                for op in ("crop", "resample"):
                    if op == "resample" and not args.resample:
                        continue
                    row = {"op": op, "dtype": dname, "size": size, "n": n}
                    out_bytes = n * size**3 * (itemsize if op == "crop" else 4)
                    work = out_bytes if op == "crop" else n * size**3 * args.resample_bytes_per_point
                    if out_bytes > args.max_out_bytes or work > args.max_work_bytes:
                        rows.append({**row, "skipped": "memory cap"})
                        continue
                    if per_item[op] is not None and per_item[op] * n > args.max_call_s:
                        rows.append({**row, "skipped": f"time cap (predicted {per_item[op] * n:.1f} s per call)"})
                        continue
                    sets = positions(rng, n, args.n_volumes, inner, args.position_sets)
                    if op == "resample":
                        affs = [window_affines(rng, n, inner, size) for _ in range(args.position_sets)]
                        sets = [(i, a) for (i, _), a in zip(sets, affs)]
                    fn, loop_fn = (crop_fn, crop_loop) if op == "crop" else (res_fn, res_loop)
                    jsets = [(bank, jnp.asarray(a), jnp.asarray(b)) for a, b in sets]
                    t, reps = median_time(fn, jsets, args.min_time)
                    per_item[op] = t / n
                    row.update(seconds_per_call=t, repeats=reps, jax_per_s=n / t)
                    if args.in_program:
                        stacked = [(bank, jnp.stack([a for _, a, _ in jsets]), jnp.stack([b for _, _, b in jsets]))]
                        tl, _ = median_time(loop_fn, stacked, args.min_time)
                        t = tl / len(jsets)
                        row.update(seconds_per_batch_in_program=t, jax_in_program_per_s=n / t)
                        del stacked
                    del jsets
                    row.update(out_bytes_per_s=out_bytes / t, frac_memcpy=out_bytes / t / (bw * 1e9))
                    # reference in the same process on the same bank
                    k = min(n, args.numpy_cap if op == "crop" else args.scipy_cap)
                    idx, pos = sets[0][0][:k], sets[0][1][:k]
                    if op == "crop":
                        out = np.empty((k, size, size, size), bank_np.dtype)
                        tn, _ = median_time(lambda: numpy_crops(bank_np, idx, pos, size, margin, out), [()], args.min_time / 4)
                        row["reference"] = "numpy slicing loop"
                    elif dname == "bfloat16":
                        tn = None
                        row["reference"] = "n/a (scipy.ndimage has no bfloat16)"
                    else:
                        out = np.empty((k, size, size, size), np.float32)
                        tn, _ = median_time(lambda: scipy_windows(bank_np, idx, pos, size, margin, out), [()], args.min_time / 4,
                                            min_reps=2)
                        row["reference"] = "scipy map_coordinates loop"
                    if tn is not None:
                        row["reference_per_s"] = k / tn
                        best = row.get("jax_in_program_per_s", row["jax_per_s"])
                        row["speedup"] = best / row["reference_per_s"]
                    rows.append(row)
                    print(format_row(row), flush=True)
        bank = bank_np = None  # free this dtype's bank before the next (the reference lambdas close over bank_np)
    return sweep_result(info, bw, {
        "n_volumes": args.n_volumes,
        "padded_shape": [padded] * 3,
        "margin": margin,
        "sizes": sizes,
        "batches": args.batches,
        "dtypes": args.dtypes,
        "max_out_bytes": args.max_out_bytes,
        "max_call_s": args.max_call_s,
        "quick": args.quick,
    }, rows)


# ------------------------------------------------------------------ output


_fmt = fmt


HEADER = (
    "| op | dtype | D | n | JAX per call, items/s | JAX in program, items/s | output GB/s | % of memcpy | reference items/s | speed-up |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r) -> str:
    if "skipped" in r:
        return f"| {r['op']} | {r['dtype']} | {r['size']} | {r['n']} | skipped: {r['skipped']} | | | | | |"
    speed = f"{_fmt(r['speedup'], 2)}×" if r.get("speedup") else "—"
    return (
        f"| {r['op']} | {r['dtype']} | {r['size']} | {r['n']} | {_fmt(r['jax_per_s'])} | {_fmt(r.get('jax_in_program_per_s'))} | "
        f"{r['out_bytes_per_s'] / 1e9:.2f} | {100 * r['frac_memcpy']:.1f} | {_fmt(r.get('reference_per_s'))} | {speed} |"
    )


def markdown(result) -> str:
    s = result["settings"]
    intro = f"memcpy {result['memcpy_GBps']:.1f} GB/s; bank {s['n_volumes']} × {s['padded_shape'][0]}³."
    return rows_markdown(result["machine"], intro, HEADER, result["rows"], format_row,
                         lambda r: f"{r['op']} {r['dtype']} D={r['size']} n={r['n']}")


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "skipped" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    colors = {"float32": "C0", "bfloat16": "C1", "uint8": "C2"}
    markers = {s: mk for s, mk in zip(result["settings"]["sizes"], "os^vD")}

    def series(op, d, s):
        return [r for r in rows if r["op"] == op and r["dtype"] == d and r["size"] == s]

    for op, ax in (("crop", axes[0]), ("resample", axes[2])):
        for d in result["settings"]["dtypes"]:
            for s in result["settings"]["sizes"]:
                rr = series(op, d, s)
                if not rr:
                    continue
                n = [r["n"] for r in rr]
                kw = dict(color=colors[d], marker=markers[s], ms=4)
                if "jax_in_program_per_s" in rr[0]:
                    ax.plot(n, [r["jax_in_program_per_s"] for r in rr], "-", label=f"JAX in program {d} D={s}", **kw)
                ax.plot(n, [r["jax_per_s"] for r in rr], ":", lw=1, label=f"JAX per call {d} D={s}", **kw)
                ref = [(r["n"], r["reference_per_s"]) for r in rr if r.get("reference_per_s")]
                if ref:
                    ax.plot(*zip(*ref), "--", alpha=0.5, label=f"{'NumPy' if op == 'crop' else 'SciPy'} {d} D={s}", **kw)
        ax.set(xscale="log", yscale="log", xlabel="parallel windows n", ylabel=f"{op}s / s",
               title=f"{op}: JAX in program (solid), per call (dotted), {'NumPy' if op == 'crop' else 'SciPy'} loop (dashed)")
        ax.title.set_fontsize(9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    for d in result["settings"]["dtypes"]:
        for s in result["settings"]["sizes"]:
            rr = series("crop", d, s)
            if rr:
                ax.plot([r["n"] for r in rr], [100 * r["frac_memcpy"] for r in rr], "-", color=colors[d], marker=markers[s],
                        label=f"{d} D={s}")
    ax.set(xscale="log", xlabel="parallel crops n", ylabel="output bytes/s, % of memcpy",
           title=f"crop bandwidth (memcpy = {result['memcpy_GBps']:.1f} GB/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    m = result["machine"]
    save_figure(fig, path, f"jaxmed.ops throughput — {machine_line(m)}")


def parse_args(argv=None):
    p = parser(__doc__, "ops_throughput.json", min_time=0.4, min_reps=None, max_call_s=4.0, n_volumes=8, spacing=None, replot=False,
               quick_help="small bank, two batch sizes, short timing (smoke test)")
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 45], help="crop edge lengths D (voxels)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024, 4096, 8192], help="parallel windows n")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--padded", type=int, default=200, help="padded edge length of each bank volume (voxels)")
    p.add_argument("--position-sets", type=int, default=3)
    p.add_argument("--max-out-bytes", type=float, default=2e9, help="skip a batch whose output exceeds this")
    p.add_argument("--max-work-bytes", type=float, default=6e9, help="skip resample batches whose intermediates exceed this")
    p.add_argument("--resample-bytes-per-point", type=int, default=64, help="estimate of resample working memory per output voxel")
    p.add_argument("--numpy-cap", type=int, default=512, help="at most this many crops in the NumPy reference loop")
    p.add_argument("--scipy-cap", type=int, default=8, help="at most this many windows in the SciPy reference loop")
    p.add_argument("--memcpy-mb", type=int, default=512)
    p.add_argument("--no-resample", dest="resample", action="store_false")
    p.add_argument("--no-in-program", dest="in_program", action="store_false", help="only time one jitted call per batch")
    args = p.parse_args(argv)
    if args.quick:
        args.n_volumes, args.padded, args.min_time, args.memcpy_mb = 2, 96, 0.1, 128
        args.batches = [b for b in args.batches if b <= 256][:3] or [16]
        args.max_call_s = 1.0
        args.scipy_cap = 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(HEADER, flush=True)
    return run_and_write(run, args, plot, markdown)


if __name__ == "__main__":
    main()
