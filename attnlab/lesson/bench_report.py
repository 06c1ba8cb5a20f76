"""What a benchmark run found: a summary in text, the targets met or missed, and the plot.

Reads the JSON-ready dict that :func:`attnlab.lesson.bench.run` returns (and
that ``bench.json`` holds), so a committed run reads as a fresh one; runs from
before the second batch and the fused kernel have no "batch" in their rows
and read as one batch, ``config["batch"]``.
"""
from __future__ import annotations

import json
import pathlib

from attnlab.lesson.bench_layers import FUSED, MECHANISMS

# The course's targets for the fused kernel, at each batch's longest context.
FUSED_ROOFLINE = 0.60  # of its roofline
FUSED_SPEEDUP = 2.5  # times faster than the PyTorch absorbed step


def _batch(row: dict, result: dict) -> int:
    return row.get("batch") or result["config"]["batch"]


def batches(result: dict) -> list[int]:
    """The run's decode batches, the prefill's (``config["batch"]``) first."""
    return result["config"].get("batches") or [result["config"]["batch"]]


def _skipped_line(s: dict) -> str:
    where = "at every context" if s["context"] is None else f"at {s['context']}"
    where += f", batch {s['batch']}" if s.get("batch") else ""
    return f"  skipped: {s['mechanism']} {s['what']} {where} ({s['error']})"


def fused_against_absorbed(result: dict) -> list[dict]:
    """Per batch, at its longest context: the fused and the absorbed rows (None where not
    timed), the speedup, and why the fused kernel was not timed."""
    out = []
    for B in batches(result):
        rows = [d for d in result["decode"] if _batch(d, result) == B]
        T = max((d["context"] for d in rows), default=None)
        at_T = {d["mechanism"]: d for d in rows if d["context"] == T}
        fused, absorbed = at_T.get(FUSED), at_T.get("MLA absorbed")
        why = next((s["error"] for s in result.get("skipped", []) if s["mechanism"] == FUSED
                    and s["context"] in (None, T) and s.get("batch") in (None, B)), "not in this run")
        speedup = absorbed["median_s"] / fused["median_s"] if fused and absorbed else None
        out.append({"batch": B, "context": T, "fused": fused, "absorbed": absorbed, "speedup": speedup,
                    "why": None if fused else why})
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _fused_summary(c: dict) -> str:
    """One batch's fused-against-absorbed figures, against the targets."""
    f, a, at = c["fused"], c["absorbed"], f"batch {c['batch']}, {c['context']} tokens"
    if not f:
        return f"  fused vs absorbed at {at}: fused not timed ({c['why']})"
    text = (f"  fused vs absorbed at {at}: fused {f['median_s'] * 1e3:.3f} ms, {f['efficiency']:.0%} of roofline "
            f"(target {FUSED_ROOFLINE * 100:.0f} %: {_met(f['efficiency'] >= FUSED_ROOFLINE)})")
    if not a:
        return text + "; absorbed not timed"
    return (text + f"; absorbed {a['median_s'] * 1e3:.3f} ms, {a['efficiency']:.0%} of roofline; speedup "
            f"{c['speedup']:.2f}x (target {FUSED_SPEEDUP}x: {_met(c['speedup'] >= FUSED_SPEEDUP)})")


def summary(result: dict) -> str:
    """The figures in a few lines of text."""
    r = result["roofline"]
    lines = [f"{result['device']} ({result['device_kind']}), torch {result['torch']}: {result['config']['why']}",
             f"roofline: copy {r['copy_bytes_per_s'] / 1e9:.1f} GB/s, matmul {r['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s"]
    exact = all(c["measured_bytes"] == c["formula_bytes"] for c in result["cache"])
    lines.append(f"cache bytes: measured {'equal' if exact else 'NOT equal'} to the formula for every mechanism and context")
    lines += [_skipped_line(s) for s in result.get("skipped", [])]
    if not result["decode"]:
        return "\n".join(lines)
    many = len(batches(result)) > 1
    for B in batches(result):
        rows = [d for d in result["decode"] if _batch(d, result) == B]
        T = max((d["context"] for d in rows), default=None)
        for d in (d for d in rows if d["context"] == T):
            splits = f", {d['splits']} split{'s' * (d['splits'] != 1)}" if "splits" in d else ""
            splits += f", {d['tiles']}" if "tiles" in d else ""
            lines.append(f"  decode at {T:>6}{f', batch {B:>2}' if many else ''}: {d['mechanism']:<18} "
                         f"{d['median_s'] * 1e3:8.3f} ms, {d['efficiency']:5.0%} of roofline "
                         f"({d['bound']}-bound{splits})")
    lines += [_fused_summary(c) for c in fused_against_absorbed(result)]
    for p in result["prefill"]:
        lines.append(f"  {p['mechanism']:<13} prefill of {p['tokens']}: {p['prefill_s'] * 1e3:8.2f} ms; "
                     f"decode step at {p['tokens']}: {p['decode_step_s'] * 1e3:7.3f} ms")
    return "\n".join(lines)


def targets(result: dict) -> list[str]:
    """The benchmark's targets, each a line saying whether this run met it: the first
    five at the prefill's batch (``config["batch"]``), then the fused kernel's at every batch."""
    main = result["config"]["batch"]
    by = {(d["mechanism"], d["context"]): d for d in result["decode"] if _batch(d, result) == main}
    contexts = sorted({d["context"] for d in result["decode"]})
    if not contexts:
        return ["no decode step was measured"]
    T = contexts[-1]
    lines = []
    for mech in ("MHA", "GQA", "MLA absorbed"):
        d = by.get((mech, T))
        verdict = (f"{d['efficiency']:.0%} of its roofline -> {'target met' if d['efficiency'] >= 0.5 else 'target MISSED'}"
                   if d else "not measured (skipped) -> target MISSED")
        lines.append(f"{mech:<13} at {T}: {verdict} (50 %)")
    pairs = [(by[("MLA absorbed", t)], by[("MHA", t)]) for t in contexts
             if t >= 4096 and ("MLA absorbed", t) in by and ("MHA", t) in by]
    lines.append("MLA absorbed faster than MHA at every context from 4K: "
                 + (str(all(a["median_s"] < m["median_s"] for a, m in pairs)) if pairs
                    else "no context that long in this run"))
    naive, mha = by.get(("MLA naive", T)), by.get(("MHA", T))
    lines.append(f"MLA naive slower than MHA at {T}: "
                 + (str(naive["median_s"] > mha["median_s"]) if naive and mha else "not measured"))
    return lines + [_fused_target(c) for c in fused_against_absorbed(result)]


def _fused_target(c: dict) -> str:
    head = f"{FUSED} at {c['context']}, batch {c['batch']}: "
    wanted = f"({FUSED_ROOFLINE * 100:.0f} % of its roofline, {FUSED_SPEEDUP}x MLA absorbed)"
    if not c["fused"]:
        return head + f"not timed ({c['why']}) -> targets not checked {wanted}"
    eff = c["fused"]["efficiency"]
    line = head + f"{eff:.0%} of its roofline -> target {_met(eff >= FUSED_ROOFLINE)} ({FUSED_ROOFLINE * 100:.0f} %); "
    if c["speedup"] is None:
        return line + f"MLA absorbed not timed -> target not checked ({FUSED_SPEEDUP}x)"
    return line + f"{c['speedup']:.2f}x MLA absorbed -> target {_met(c['speedup'] >= FUSED_SPEEDUP)} ({FUSED_SPEEDUP}x)"


def plot(result: dict):
    """A matplotlib Figure: decode latency and roofline efficiency against context, and prefill vs decode."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    bs = batches(result)
    for i, mech in enumerate(MECHANISMS):
        for k, B in enumerate(bs):  # the prefill's batch solid, the others dashed
            rows = [d for d in result["decode"] if d["mechanism"] == mech and _batch(d, result) == B]
            if not rows:  # not timed (the fused kernel on a CPU, an older run): no line, no legend entry
                continue
            ctx = [d["context"] for d in rows]
            style = dict(color=f"C{i}", marker="o", linestyle="--" if k else "-", markersize=3 + 2 * (k == 0),
                         label=mech if k == 0 else None)
            ax1.plot(ctx, [d["median_s"] * 1e3 for d in rows], **style)
            ax2.plot(ctx, [d["efficiency"] * 100 for d in rows], **style)
    contexts = result["config"]["contexts"]
    labels = [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts]
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(contexts, labels)
        ax.minorticks_off()
        ax.set_xlabel("context (tokens)")
    which = f" (batch {bs[0]} solid, {', '.join(map(str, bs[1:]))} dashed)" if len(bs) > 1 else ""
    ax1.set(yscale="log", ylabel="ms per decode step")
    ax1.set_title("decode step, one layer" + which, fontsize=10 if which else None)
    ax2.set(ylabel="% of roofline", title="efficiency against the roofline")
    ax2.axhline(50, color="0.6", linestyle=":")
    ax1.legend(fontsize=7)
    names = [p["mechanism"] for p in result["prefill"]]
    x = range(len(names))
    ax3.bar([i - 0.2 for i in x], [p["prefill_s"] * 1e3 for p in result["prefill"]], 0.4, label="prefill")
    ax3.bar([i + 0.2 for i in x], [p["decode_step_s"] * 1e3 for p in result["prefill"]], 0.4, label="one decode step")
    ax3.set(xticks=list(x), xticklabels=names, yscale="log", ylabel="ms",
            title=(f"MLA at {result['prefill'][0]['tokens']} tokens" + (f", batch {bs[0]}" if len(bs) > 1 else ""))
            if result["prefill"] else "")
    tallest = max([p["prefill_s"] * 1e3 for p in result["prefill"]], default=1.0)
    ax3.set_ylim(top=tallest * 30)  # room above the bars for the legend
    ax3.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{result['device']} · {result['config']['dtype']} · batch {' and '.join(map(str, bs))}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_png(result: dict, dpi: int = 100) -> bytes:
    """The plot as PNG bytes (for IPython.display.Image, or a file)."""
    import io

    buf = io.BytesIO()
    plot(result).savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write(result: dict, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / "bench.json", out / "bench.png"
    js.write_text(json.dumps(result, indent=1) + "\n")
    png.write_bytes(plot_png(result, dpi=110))
    return js, png
