"""``segany probe map``: every mask embedding laid out in 2-D, coloured by data set (or label).

PCA (fast, linear, deterministic) or t-SNE (neighbourhoods, slower), both from
scikit-learn, on L2-normalised features so that the map reflects the cosine geometry that
``probe similar`` searches. One panel per feature, side by side: does the decoder token or
the pooled embedding separate the sources better?
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .store import MaskEmbeddings

METHODS = ("pca", "tsne")
MAX_LEGEND = 14  # more groups than this: the rarest share one "other" colour


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Nx2 coordinates of the rows of ``x`` (L2-normalised first)."""
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(x) < 3:
        raise ValueError(f"a map needs at least 3 masks, got {len(x)}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def groups_of(emb: MaskEmbeddings, colour_by: str) -> np.ndarray:
    """The group name of each mask: its data set, or its label ("unlabelled" when none)."""
    if colour_by == "dataset":
        return emb.dataset.astype(str)
    if colour_by == "label":
        return np.where(emb.label.astype(str) == "", "unlabelled", emb.label.astype(str))
    raise ValueError(f"--color-by must be dataset or label, got {colour_by!r}")


def render_map(
    emb: MaskEmbeddings,
    path: str | os.PathLike,
    features: tuple[str, ...] = ("token", "pooled"),
    method: str = "pca",
    colour_by: str = "dataset",
    seed: int = 0,
) -> Path:
    """Write the map PNG (atomically); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..eval.report import save_figure

    groups = groups_of(emb, colour_by)
    names, counts = np.unique(groups, return_counts=True)
    ranked = [str(n) for n in names[np.argsort(-counts, kind="stable")]]
    shown = ranked if len(ranked) <= MAX_LEGEND else ranked[: MAX_LEGEND - 1]
    groups = np.where(np.isin(groups, shown), groups, "other")
    if len(shown) < len(ranked):
        shown.append("other")
    cmap = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    coords = [project_2d(emb.feature(f), method, seed) for f in features]
    fig, axes = plt.subplots(1, len(features), figsize=(4.2 * len(features), 4.0), squeeze=False)
    for ax, feature, xy in zip(axes[0], features, coords):
        for g, name in enumerate(shown):
            sel = groups == name
            ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=6,
                alpha=0.7,
                color=cmap(g % cmap.N),
                label=f"{name} ({sel.sum()})",
                linewidths=0,
            )
        ax.set_title(f"{feature} embedding, {method.upper() if method == 'pca' else 't-SNE'}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.suptitle(f"{len(emb)} masks coloured by {colour_by}", fontsize=9)
    target = Path(path)
    save_figure(fig, target, dpi=90)
    return target
