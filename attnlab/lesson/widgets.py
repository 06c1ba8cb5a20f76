"""Interactive widgets. They work when driven from Python (set ``.value`` on a
control, read ``.summary.value`` and the plot's PNG) as well as in a browser,
because they draw with a plain matplotlib ``Figure`` into an ``Image`` widget
instead of relying on a notebook's output area.
"""
from __future__ import annotations

import io
from dataclasses import replace

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from attnlab import arguments
from attnlab.lesson import cache
from attnlab.models import GPUS, MODELS

CUSTOM = "custom"

# CacheGrowth grows an MHA cache: the MHA models, and DeepSeek-V3's heads cached as a plain MHA model would.
_V3 = MODELS["DeepSeek-V3"]
MHA_MODELS = {m.name: m for m in MODELS.values() if m.is_mha} | {"DeepSeek-V3 dims as MHA": replace(
    _V3, name="DeepSeek-V3 dims as MHA", attention="MHA",
    source=f"{_V3.source}: 61 layers, 128 heads; K and V of 128 dims each, as a plain MHA model would cache them")}

# CacheExplorer compares all four mechanisms on a model with GQA or MLA.
EXPLORER_MODELS = {m.name: m for m in MODELS.values() if m.attention in ("GQA", "MLA")}


def _explorer_dims(m) -> tuple:
    """(layers, heads, K/V heads, head width, d_c, d_rope) for the explorer. What a model does not ship
    with is assumed: an MLA version of a GQA model follows DeepSeek-V2's rule (d_c = 4 d_h, d_h^R = d_h / 2);
    a GQA version of an MLA model has 8 K/V heads (Llama 3's count)."""
    kv = m.kv_heads if m.attention == "GQA" else 8
    return m.n_layers, m.n_heads, kv, m.d_head, m.d_latent or 4 * m.d_head, m.d_rope or m.d_head // 2


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


class CacheGrowth(widgets.VBox):
    """An MHA model's KV cache against context length.

    Controls: ``preset``, ``n_layers``, ``n_heads``, ``d_head``, ``batch``,
    ``dtype`` and ``context`` (log scale, 1K to 1M tokens). Read
    ``bytes_per_token`` and ``total_bytes`` for the numbers shown.
    ``elements_per_token(n_layers, n_heads, d_head)``: the formula it draws
    (workbook 01 hands it the learner's own; by default, the course's).
    """

    def __init__(self, preset: str = "Llama-2-7B", elements_per_token=None):
        self.elements_per_token = elements_per_token or cache.mha_elements_per_token
        if preset not in MHA_MODELS:
            raise ValueError(f"preset must be one of the MHA models {sorted(MHA_MODELS)}, got {preset!r}")
        style = {"description_width": "8em"}
        self.preset = widgets.Dropdown(options=[*MHA_MODELS, CUSTOM], value=preset, description="model", style=style)
        self.n_layers = widgets.IntSlider(value=1, min=1, max=128, description="layers", style=style)
        self.n_heads = widgets.IntSlider(value=1, min=1, max=128, description="heads", style=style)
        self.d_head = widgets.IntSlider(value=128, min=8, max=256, step=8, description="head dim", style=style)
        self.batch = widgets.IntSlider(value=1, min=1, max=64, description="batch", style=style)
        self.dtype = widgets.Dropdown(options=["fp32", "bf16", "fp8"], value="bf16", description="cache dtype", style=style)
        self.context = widgets.FloatLogSlider(
            value=4096, base=2, min=10, max=20, step=1, description="context", readout_format=".0f", style=style
        )
        self.summary = widgets.HTML()
        self.plot = widgets.Image(format="png")
        self._applying_preset = False
        self._apply_preset()
        for control in (self.n_layers, self.n_heads, self.d_head):
            control.observe(self._on_dimension, names="value")
        self.preset.observe(self._on_preset, names="value")
        for control in (self.batch, self.dtype, self.context):
            control.observe(lambda change: self._redraw(), names="value")
        controls = widgets.VBox([self.preset, self.n_layers, self.n_heads, self.d_head, self.batch, self.dtype, self.context])
        super().__init__([widgets.HBox([controls, self.plot]), self.summary])
        self._redraw()

    # -- the numbers ---------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        elements = int(self.elements_per_token(self.n_layers.value, self.n_heads.value, self.d_head.value))
        return elements * cache.dtype_bytes(self.dtype.value)

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_token * int(self.context.value) * self.batch.value

    # -- events --------------------------------------------------------------
    def _apply_preset(self):
        p = MHA_MODELS.get(self.preset.value)
        if p is None:
            return
        self._applying_preset = True
        try:
            self.n_layers.value, self.n_heads.value, self.d_head.value = p.n_layers, p.n_heads, p.d_head
        finally:
            self._applying_preset = False

    def _on_preset(self, change):
        self._apply_preset()
        self._redraw()

    def _on_dimension(self, change):
        if not self._applying_preset:
            p = MHA_MODELS.get(self.preset.value)
            if p is not None and (p.n_layers, p.n_heads, p.d_head) != (
                self.n_layers.value, self.n_heads.value, self.d_head.value
            ):
                self.preset.value = CUSTOM
            self._redraw()

    def _redraw(self):
        context, batch = int(self.context.value), self.batch.value
        per_token = self.bytes_per_token
        p = MHA_MODELS.get(self.preset.value)
        weights = p.n_params * 2 if p else None  # bf16 weights
        lines = [
            f"<b>{self.n_layers.value} layers × {self.n_heads.value} heads × {self.d_head.value} dims</b>",
            f"per token: 2 × {self.n_heads.value} × {self.d_head.value} × {self.n_layers.value} = "
            f"{per_token // cache.dtype_bytes(self.dtype.value):,} elements = {cache.format_bytes(per_token)}",
            f"cache for {batch} × {context:,} tokens: <b>{cache.format_bytes(self.total_bytes)}</b>",
        ]
        if weights:
            lines.append(f"weights in bf16: {cache.format_bytes(weights)} ({p.source})")
        self.summary.value = "<br>".join(lines)

        contexts = np.logspace(10, 20, 41, base=2)
        fig = Figure(figsize=(5.5, 3.2))
        ax = fig.subplots()
        ax.plot(contexts, contexts * per_token * batch / cache.GiB, label="KV cache")
        ax.plot([context], [self.total_bytes / cache.GiB], "o", color="C0")
        if weights:
            ax.axhline(weights / cache.GiB, color="C3", linestyle="--", label="weights (bf16)")
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="GiB", title="MHA KV cache")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        self.plot.value = _png(fig)


class RopeRotation(widgets.VBox):
    """One pair of coordinates, rotated by RoPE at position ``position``, for
    several frequencies: the fast pairs spin, the slow ones barely move.

    Controls: ``position``, ``d`` (head width), ``base``. ``angles`` holds the
    rotation angle (radians, modulo 2 pi) of each pair drawn.
    ``frequencies(d, base)``: the frequencies it draws (workbook 03 hands it the
    learner's ``rope_frequencies``; by default, the course's).
    """

    def __init__(self, d: int = 64, base: float = 10000.0, frequencies=None):
        arguments.int_in_range("d", d, 8, 256, step=8)
        self.frequencies = frequencies
        style = {"description_width": "6em"}
        self.position = widgets.IntSlider(value=1, min=0, max=256, description="position m", style=style)
        self.d = widgets.IntSlider(value=d, min=8, max=256, step=8, description="head dim d", style=style)
        self.base = widgets.FloatLogSlider(value=base, base=10, min=2, max=6, step=0.25, description="base", style=style)
        self.summary = widgets.HTML()
        self.plot = widgets.Image(format="png")
        for control in (self.position, self.d, self.base):
            control.observe(lambda change: self._redraw(), names="value")
        super().__init__([widgets.HBox([widgets.VBox([self.position, self.d, self.base, self.summary]), self.plot])])
        self._redraw()

    def pairs(self) -> list[int]:
        """The frequency indices drawn: the fastest, two in between, the slowest."""
        half = self.d.value // 2
        return sorted({0, half // 8, half // 2, half - 1})

    def _redraw(self):
        from attnlab import answers

        theta = (self.frequencies or answers.rope_frequencies)(self.d.value, self.base.value).double()
        m = self.position.value
        self.angles = {i: float((m * theta[i]) % (2 * np.pi)) for i in self.pairs()}
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(circle), np.sin(circle), color="0.85")
        for n, (i, angle) in enumerate(self.angles.items()):
            ax.annotate("", xy=(np.cos(angle), np.sin(angle)), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="->", color=f"C{n}", lw=2))
            ax.plot([], [], color=f"C{n}", label=f"pair {i}: θ = {float(theta[i]):.2g}")
        ax.plot([1], [0], "k.", label="position 0")
        ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), aspect="equal", xticks=[], yticks=[], title=f"RoPE at position {m}")
        ax.legend(loc="lower left", fontsize=7)
        fig.tight_layout()
        self.plot.value = _png(fig)
        wavelengths = [2 * np.pi / float(theta[i]) for i in self.angles]
        self.summary.value = "wavelength (positions per turn): " + ", ".join(
            f"pair {i}: {w:,.0f}" for i, w in zip(self.angles, wavelengths))


class RopeScores(widgets.VBox):
    """q · k for one query and one key placed at every pair of positions (m, n).

    With RoPE the score depends on m - n alone, so the heat map is constant
    along its diagonals. ``scores`` holds the (T, T) matrix drawn. ``tables`` and
    ``rotate``: the RoPE it draws, as ``rope_tables`` and ``rope_interleaved``
    (workbook 03 hands it the learner's; by default, the course's).
    """

    def __init__(self, d: int = 64, length: int = 64, seed: int = 0, tables=None, rotate=None):
        self.tables, self.rotate = tables, rotate
        arguments.int_in_range("d", d, 8, 256, step=8)
        arguments.int_in_range("length", length, 8, 256, step=8)
        style = {"description_width": "6em"}
        self.d = widgets.IntSlider(value=d, min=8, max=256, step=8, description="head dim d", style=style)
        self.base = widgets.FloatLogSlider(value=10000, base=10, min=2, max=6, step=0.25, description="base", style=style)
        self.length = widgets.IntSlider(value=length, min=8, max=256, step=8, description="positions", style=style)
        self.similar = widgets.Checkbox(value=True, description="k = q (a key that matches the query)")
        self.plot = widgets.Image(format="png")
        self._seed = seed
        for control in (self.d, self.base, self.length, self.similar):
            control.observe(lambda change: self._redraw(), names="value")
        controls = widgets.VBox([self.d, self.base, self.length, self.similar])
        super().__init__([widgets.HBox([controls, self.plot])])
        self._redraw()

    def _redraw(self):
        import torch

        from attnlab import answers

        d, T = self.d.value, self.length.value
        gen = torch.Generator().manual_seed(self._seed)
        q = torch.randn(d, generator=gen, dtype=torch.float64)
        k = q.clone() if self.similar.value else torch.randn(d, generator=gen, dtype=torch.float64)
        tables, rotate = self.tables or answers.rope_tables, self.rotate or answers.rope_interleaved
        cos, sin = tables(torch.arange(T), d, self.base.value)
        cos, sin = cos.double(), sin.double()
        rq = rotate(q.expand(T, d), cos, sin)  # (T, d): q at every position
        rk = rotate(k.expand(T, d), cos, sin)  # (T, d): k at every position
        self.scores = (rq @ rk.T / np.sqrt(d)).numpy()  # (T, T): [m, n]
        fig = Figure(figsize=(4.4, 3.6))
        ax = fig.subplots()
        image = ax.imshow(self.scores, cmap="RdBu_r")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set(xlabel="key position n", ylabel="query position m", title="q·k/√d after RoPE")
        fig.tight_layout()
        self.plot.value = _png(fig)


class CacheExplorer(widgets.VBox):
    """The KV cache of a model under MHA, GQA, MQA and MLA, against context length.

    Controls: ``preset``, ``gpu``, ``context`` (log scale, 1K to 1M), ``batch``,
    ``n_layers``, ``n_heads``, ``n_kv_heads``, ``d_head``, ``d_latent``, ``d_rope``,
    ``dtype``. ``numbers`` holds what the summary shows: per mechanism the bytes
    per token, the ratio to MHA, the cache at the chosen context and the longest
    context that fits beside the weights (bf16) on the chosen GPU.
    """

    MECHANISMS = ("MHA", "GQA", "MQA", "MLA")

    def __init__(self, preset: str = "DeepSeek-V3", gpu: str = "80 GB"):
        if preset not in EXPLORER_MODELS:
            raise ValueError(f"preset must be one of {sorted(EXPLORER_MODELS)}, got {preset!r}")
        if gpu not in GPUS:
            raise ValueError(f"gpu must be one of {list(GPUS)}, got {gpu!r}")
        # wide enough for the longest label, "KV heads (GQA)"
        style = {"description_width": "9em"}
        self.preset = widgets.Dropdown(options=[*EXPLORER_MODELS, CUSTOM], value=preset, description="model", style=style)
        self.gpu = widgets.Dropdown(options=list(GPUS), value=gpu, description="GPU memory", style=style)
        self.context = widgets.FloatLogSlider(value=131072, base=2, min=10, max=20, step=1, description="context",
                                              readout_format=".0f", style=style)
        self.batch = widgets.IntSlider(value=1, min=1, max=64, description="batch", style=style)
        self.n_layers = widgets.IntSlider(value=1, min=1, max=128, description="layers", style=style)
        self.n_heads = widgets.IntSlider(value=1, min=1, max=128, description="heads", style=style)
        self.n_kv_heads = widgets.IntSlider(value=1, min=1, max=128, description="KV heads (GQA)", style=style)
        self.d_head = widgets.IntSlider(value=128, min=16, max=256, step=16, description="head dim", style=style)
        self.d_latent = widgets.IntSlider(value=512, min=64, max=2048, step=64, description="latent d_c", style=style)
        self.d_rope = widgets.IntSlider(value=64, min=0, max=256, step=16, description="RoPE dim", style=style)
        self.dtype = widgets.Dropdown(options=["fp32", "bf16", "fp8"], value="bf16", description="cache dtype", style=style)
        self.summary = widgets.HTML()
        self.plot = widgets.Image(format="png")
        self._dims = (self.n_layers, self.n_heads, self.n_kv_heads, self.d_head, self.d_latent, self.d_rope)
        self._applying = False
        self._apply_preset()
        self.preset.observe(lambda change: (self._apply_preset(), self._redraw()), names="value")
        for control in self._dims:
            control.observe(self._on_dimension, names="value")
        for control in (self.gpu, self.context, self.batch, self.dtype):
            control.observe(lambda change: self._redraw(), names="value")
        controls = widgets.VBox([self.preset, self.gpu, self.context, self.batch, *self._dims, self.dtype])
        super().__init__([widgets.HBox([controls, self.plot]), self.summary])
        self._redraw()

    def _apply_preset(self):
        p = EXPLORER_MODELS.get(self.preset.value)
        if p is None:
            return
        self._applying = True
        try:
            for control, value in zip(self._dims, _explorer_dims(p)):
                control.value = value
        finally:
            self._applying = False

    def _on_dimension(self, change):
        if self._applying:
            return
        p = EXPLORER_MODELS.get(self.preset.value)
        if p is not None and _explorer_dims(p) != tuple(c.value for c in self._dims):
            self.preset.value = CUSTOM  # hand-made dimensions are no longer the preset
        self._redraw()

    def _weights_bytes(self) -> float:
        p = EXPLORER_MODELS.get(self.preset.value)
        return p.n_params * 2 if p else 0.0  # bf16 weights; a custom model has none counted

    def _compute(self) -> dict:
        heads, kv = self.n_heads.value, self.n_kv_heads.value
        if heads % kv:  # GQA needs whole groups: use the largest divisor of heads not above the slider
            kv = max(g for g in range(1, kv + 1) if heads % g == 0)
        dims = (self.n_layers.value, heads, kv, self.d_head.value, self.d_latent.value, max(self.d_rope.value, 0))
        es = cache.dtype_bytes(self.dtype.value)
        context, batch = int(self.context.value), self.batch.value
        gpu, weights = GPUS[self.gpu.value], self._weights_bytes()
        out = {}
        for mech in self.MECHANISMS:
            if mech == "MLA" and dims[5] == 0:
                per_token = (dims[4]) * dims[0] * es
            else:
                per_token = cache.mechanism_elements_per_token(mech, *dims) * es
            out[mech] = {
                "bytes_per_token": per_token,
                "cache_bytes": per_token * context * batch,
                "longest_context": cache.longest_context(gpu, weights, per_token, batch),
            }
        for mech in self.MECHANISMS:
            out[mech]["ratio_to_mha"] = out["MHA"]["bytes_per_token"] / out[mech]["bytes_per_token"]
        out["kv_heads_used"] = kv
        return out

    def _redraw(self):
        self.numbers = n = self._compute()
        context, batch = int(self.context.value), self.batch.value
        gpu, weights = GPUS[self.gpu.value], self._weights_bytes()
        p = EXPLORER_MODELS.get(self.preset.value)
        td = '<td style="padding: 1px 10px; text-align: right">'
        th = '<th style="padding: 1px 10px; text-align: right; border-bottom: 1px solid #999">'
        rows = "".join(
            f"<tr><td>{m}</td>{td}{cache.format_bytes(n[m]['bytes_per_token'])}</td>"
            f"{td}{n[m]['ratio_to_mha']:.1f}×</td>{td}{cache.format_bytes(n[m]['cache_bytes'])}</td>"
            f"{td}{n[m]['longest_context']:,}</td></tr>" for m in self.MECHANISMS)
        head = (f"<b>{self.preset.value}</b>" + (f" (ships with {p.attention}; {p.source})" if p else "")
                + f" · {self.gpu.value} GPU · weights {cache.format_bytes(weights)} in bf16"
                + (" · <b>the weights alone do not fit</b>" if weights >= gpu else ""))
        self.summary.value = (
            f"{head}<table><tr><th style='text-align: left; border-bottom: 1px solid #999'>mechanism</th>"
            f"{th}per token</th>{th}smaller than MHA</th>"
            f"{th}cache, {batch} × {context:,} tokens</th>{th}longest context that fits</th></tr>{rows}</table>")

        contexts = np.logspace(10, 20, 41, base=2)
        fig = Figure(figsize=(5.8, 3.4))
        ax = fig.subplots()
        for i, m in enumerate(self.MECHANISMS):
            ax.plot(contexts, contexts * n[m]["bytes_per_token"] * batch / cache.GiB, color=f"C{i}", label=m)
            ax.plot([context], [n[m]["cache_bytes"] / cache.GiB], "o", color=f"C{i}")
        if gpu > weights:
            ax.axhline((gpu - weights) / cache.GiB, color="k", linestyle="--", label="free beside the weights")
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="GiB",
               title=f"KV cache, batch {batch}, {self.dtype.value}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        self.plot.value = _png(fig)
