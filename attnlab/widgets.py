"""Interactive widgets. They work when driven from Python (set ``.value`` on a
control, read ``.summary.value`` and the plot's PNG) as well as in a browser,
because they draw with a plain matplotlib ``Figure`` into an ``Image`` widget
instead of relying on a notebook's output area.
"""
from __future__ import annotations

import io

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from . import cache

CUSTOM = "custom"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


class CacheGrowth(widgets.VBox):
    """An MHA model's KV cache against context length.

    Controls: ``preset``, ``n_layers``, ``n_heads``, ``d_head``, ``batch``,
    ``dtype`` and ``context`` (log scale, 1K to 1M tokens). Read
    ``bytes_per_token`` and ``total_bytes`` for the numbers shown.
    """

    def __init__(self, preset: str = "Llama-2-7B"):
        if preset not in cache.PRESETS or not cache.PRESETS[preset].is_mha:
            mha = sorted(name for name, p in cache.PRESETS.items() if p.is_mha)
            raise ValueError(f"preset must be one of the MHA models {mha}, got {preset!r}")
        style = {"description_width": "8em"}
        mha = [name for name, p in cache.PRESETS.items() if p.is_mha]
        self.preset = widgets.Dropdown(options=[*mha, CUSTOM], value=preset, description="model", style=style)
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
        elements = cache.mha_elements_per_token(self.n_layers.value, self.n_heads.value, self.d_head.value)
        return elements * cache.dtype_bytes(self.dtype.value)

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_token * int(self.context.value) * self.batch.value

    # -- events --------------------------------------------------------------
    def _apply_preset(self):
        p = cache.PRESETS.get(self.preset.value)
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
            p = cache.PRESETS.get(self.preset.value)
            if p is not None and (p.n_layers, p.n_heads, p.d_head) != (
                self.n_layers.value, self.n_heads.value, self.d_head.value
            ):
                self.preset.value = CUSTOM
            self._redraw()

    def _redraw(self):
        context, batch = int(self.context.value), self.batch.value
        per_token = self.bytes_per_token
        p = cache.PRESETS.get(self.preset.value)
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
