"""Architecture pictures (paper Fig. 9): a genotype drawn as a PNG.

Nodes are the projected input (``in``) and one box per layer labelled with its operation; an
input edge is a solid arrow, a residual edge a dotted one, and every layer feeds the attentive
sum (``out``) drawn with thin grey arrows.
"""

from __future__ import annotations

from pathlib import Path

from longtail.io import atomic_path
from longtail.models.genotype import Genotype


def draw_genotype(genotype: Genotype, path: str | Path, *, title: str = "") -> Path:
    """Draw ``genotype`` left to right and save it as a PNG (atomically).

    Args:
        genotype: the architecture.
        path: destination ``.png``.
        title: optional title (e.g. the scenario and its FLOPs).

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    n = len(genotype.layers)
    xs = [i * 2.0 for i in range(n + 2)]  # in, layers..., out
    fig, ax = plt.subplots(figsize=(2.0 + 1.9 * (n + 1), 3.2))
    labels = ["in", *[g.op for g in genotype.layers], "out"]
    for i, (x, label) in enumerate(zip(xs, labels, strict=True)):
        colour = "#e8f0fe" if 0 < i <= n else "#f1f3f4"
        ax.add_patch(FancyBboxPatch((x - 0.7, -0.3), 1.4, 0.6, boxstyle="round,pad=0.05", fc=colour, ec="#444"))
        ax.text(x, 0, label, ha="center", va="center", fontsize=9)

    def arrow(a: int, b: int, style: str, colour: str, rad: float, width: float = 1.3) -> None:
        ax.add_patch(FancyArrowPatch((xs[a] + 0.7, 0.05 if rad else 0), (xs[b] - 0.7, 0.05 if rad else 0),
                                     connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=12,
                                     linestyle=style, color=colour, lw=width))

    for layer, gene in enumerate(genotype.layers, start=1):
        arrow(gene.input, layer, "solid", "#1a73e8", 0.0 if gene.input == layer - 1 else -0.35)
        for r in gene.residual:
            arrow(r, layer, (0, (2, 2)), "#d93025", 0.45)
        arrow(layer, n + 1, "solid", "#bbb", -0.25 if layer < n else 0.0, width=0.7)
    ax.set_xlim(-1.0, xs[-1] + 1.0)
    ax.set_ylim(-1.5, 1.5)
    ax.axis("off")
    ax.set_title(title or f"{n} layers, width {genotype.hidden_size}: solid = input, dotted = residual",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
