"""What a benchmark run found: a summary in text, the targets met or missed, and the plot.

Reads the JSON-ready dict that :func:`attnlab.lesson.bench.run` returns (and
that ``bench.json`` holds), so a committed run reads as a fresh one.
"""
from __future__ import annotations

import json
import pathlib

from attnlab.lesson.bench_layers import MECHANISMS


def summary(result: dict) -> str:
    """The figures in a few lines of text."""
    r = result["roofline"]
    lines = [f"{result['device']} ({result['device_kind']}), torch {result['torch']}: {result['config']['why']}",
             f"roofline: copy {r['copy_bytes_per_s'] / 1e9:.1f} GB/s, matmul {r['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s"]
    exact = all(c["measured_bytes"] == c["formula_bytes"] for c in result["cache"])
    lines.append(f"cache bytes: measured {'equal' if exact else 'NOT equal'} to the formula for every mechanism and context")
    for s in result.get("skipped", []):
        lines.append(f"  skipped: {s['mechanism']} {s['what']} at {s['context']} ({s['error']})")
    if not result["decode"]:
        return "\n".join(lines)
    T = max(d["context"] for d in result["decode"])
    for d in (d for d in result["decode"] if d["context"] == T):
        lines.append(f"  decode at {T:>6}: {d['mechanism']:<13} {d['median_s'] * 1e3:8.3f} ms, "
                     f"{d['efficiency']:5.0%} of roofline ({d['bound']}-bound)")
    for p in result["prefill"]:
        lines.append(f"  {p['mechanism']:<13} prefill of {p['tokens']}: {p['prefill_s'] * 1e3:8.2f} ms; "
                     f"decode step at {p['tokens']}: {p['decode_step_s'] * 1e3:7.3f} ms")
    return "\n".join(lines)


def targets(result: dict) -> list[str]:
    """The benchmark's targets, each a line saying whether this run met it."""
    by = {(d["mechanism"], d["context"]): d for d in result["decode"]}
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
    return lines


def plot(result: dict):
    """A matplotlib Figure: decode latency and roofline efficiency against context, and prefill vs decode."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for i, mech in enumerate(MECHANISMS):
        rows = [d for d in result["decode"] if d["mechanism"] == mech]
        ctx = [d["context"] for d in rows]
        ax1.plot(ctx, [d["median_s"] * 1e3 for d in rows], "o-", color=f"C{i}", label=mech)
        ax2.plot(ctx, [d["efficiency"] * 100 for d in rows], "o-", color=f"C{i}", label=mech)
    contexts = result["config"]["contexts"]
    labels = [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts]
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(contexts, labels)
        ax.minorticks_off()
        ax.set_xlabel("context (tokens)")
    ax1.set(yscale="log", ylabel="ms per decode step", title="decode step, one layer")
    ax2.set(ylabel="% of roofline", title="efficiency against the roofline")
    ax2.axhline(50, color="0.6", linestyle=":")
    ax1.legend(fontsize=7)
    names = [p["mechanism"] for p in result["prefill"]]
    x = range(len(names))
    ax3.bar([i - 0.2 for i in x], [p["prefill_s"] * 1e3 for p in result["prefill"]], 0.4, label="prefill")
    ax3.bar([i + 0.2 for i in x], [p["decode_step_s"] * 1e3 for p in result["prefill"]], 0.4, label="one decode step")
    ax3.set(xticks=list(x), xticklabels=names, yscale="log", ylabel="ms",
            title=f"MLA at {result['prefill'][0]['tokens']} tokens" if result["prefill"] else "")
    tallest = max([p["prefill_s"] * 1e3 for p in result["prefill"]], default=1.0)
    ax3.set_ylim(top=tallest * 30)  # room above the bars for the legend
    ax3.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{result['device']} · {result['config']['dtype']} · batch {result['config']['batch']}", fontsize=9)
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
