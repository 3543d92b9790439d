"""``segany probe linear``: does an embedding separate classes it was never trained on?

A logistic-regression probe (standardised features, multinomial, scikit-learn) is fitted on
the *train* masks' embeddings and labels and scored on the *val* masks; the same classifier
on a colour histogram of the mask's pixels and the majority class are the baselines it must
beat for the embedding to carry more than colour. The regularisation strength is chosen by
cross-validation on the train masks alone, folds split by image (masks of one photo look
alike), so the val masks are only ever evaluated on. Train and val must not share an image
(checked by content digest): a val mask on a train photo would measure memory.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .store import FEATURES, MaskEmbeddings

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse regularisation strengths tried by the train-only cross-validation."""


@dataclass(frozen=True)
class ProbeScore:
    """Val-set scores of one feature (or the majority baseline)."""

    feature: str
    accuracy: float
    balanced_accuracy: float
    """Mean per-class recall over the classes present in val: a majority guess scores 1/K."""
    C: float | None
    """The regularisation the train cross-validation chose (None for the majority baseline)."""


def labelled(emb: MaskEmbeddings, name: str) -> MaskEmbeddings:
    """The masks of ``emb`` that have a label; ValueError when none has."""
    keep = emb.label.astype(str) != ""
    if not keep.any():
        raise ValueError(
            f"{name}: no mask has a label (embed masks from a COCO instances file, whose "
            "supercategories become the labels)"
        )
    return emb.select(np.flatnonzero(keep))


def check_disjoint(train: MaskEmbeddings, val: MaskEmbeddings) -> None:
    """ValueError when an image (by content) is in both sets."""
    shared = set(train.image_sha256.tolist()) & set(val.image_sha256.tolist())
    if shared:
        i = int(np.flatnonzero(np.isin(val.image_sha256, list(shared)))[0])
        raise ValueError(
            f"{len(shared)} image(s) are in both train and val (e.g. {val.image[i]}); "
            "a probe must never be trained on the images it is scored on"
        )


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def fit_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[Any, float]:
    """A fitted ``StandardScaler + LogisticRegression`` pipeline and its C, picked from
    :data:`C_GRID` by image-grouped cross-validated accuracy on (x, y) alone (C = 1 when
    there are fewer than 2 images to split)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, random_state=seed))
    n_groups = len(np.unique(groups))
    with warnings.catch_warnings():
        # lbfgs stopping a little short at the weakest regularisation of a fold changes no
        # prediction that matters here; it is not worth a line on every run
        warnings.simplefilter("ignore", ConvergenceWarning)
        if n_groups < 2:
            return pipeline.fit(x, y), 1.0
        folds = list(GroupKFold(n_splits=min(5, n_groups)).split(x, y, groups))
        search = GridSearchCV(pipeline, {"logisticregression__C": list(C_GRID)}, cv=folds, scoring="accuracy")
        search.fit(x, y)
    return search.best_estimator_, float(search.best_params_["logisticregression__C"])


def run_linear_probe(
    train: MaskEmbeddings, val: MaskEmbeddings, features: tuple[str, ...] = FEATURES, seed: int = 0
) -> dict[str, Any]:
    """Fit one probe per feature on ``train`` and score it on ``val``; plus the majority class.

    Returns a JSON-able dict: ``scores`` (one :class:`ProbeScore` each), class counts, the
    number of val masks whose class never occurs in train (always counted as errors).
    """
    train, val = labelled(train, "train"), labelled(val, "val")
    check_disjoint(train, val)
    y_train, y_val = train.label.astype(str), val.label.astype(str)
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"the train masks have a single class ({y_train[0]!r}); a probe needs at least two")
    scores = []
    for feature in features:
        model, chosen = fit_probe(train.feature(feature), y_train, train.image_sha256, seed)
        pred = model.predict(val.feature(feature))
        scores.append(ProbeScore(feature, float(np.mean(pred == y_val)), _balanced_accuracy(y_val, pred), chosen))
    classes, counts = np.unique(y_train, return_counts=True)
    majority = str(classes[np.argmax(counts)])
    pred = np.full(len(y_val), majority)
    scores.append(ProbeScore("majority", float(np.mean(pred == y_val)), _balanced_accuracy(y_val, pred), None))
    val_classes, val_counts = np.unique(y_val, return_counts=True)
    return {
        "scores": [asdict(s) for s in scores],
        "train_masks": len(train),
        "val_masks": len(val),
        "train_images": len(np.unique(train.image_sha256)),
        "val_images": len(np.unique(val.image_sha256)),
        "majority_class": majority,
        "train_classes": {str(k): int(v) for k, v in zip(classes, counts)},
        "val_classes": {str(k): int(v) for k, v in zip(val_classes, val_counts)},
        "val_masks_of_unseen_classes": int((~np.isin(y_val, classes)).sum()),
        "chance_balanced_accuracy": 1.0 / len(val_classes),
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The result as a small table for the terminal (and the docs)."""
    lines = [
        f"train: {result['train_masks']} masks on {result['train_images']} images, "
        f"{len(result['train_classes'])} classes; val: {result['val_masks']} masks on {result['val_images']} images "
        f"({result['val_masks_of_unseen_classes']} of classes unseen in train)",
        f"{'feature':<10} {'accuracy':>9} {'balanced':>9} {'C':>7}",
    ]
    for s in result["scores"]:
        c = "-" if s["C"] is None else f"{s['C']:g}"
        lines.append(f"{s['feature']:<10} {s['accuracy']:>9.3f} {s['balanced_accuracy']:>9.3f} {c:>7}")
    return lines


def render_scores(result: dict[str, Any], path: str | os.PathLike, title: str = "linear probe") -> Path:
    """A bar chart of val accuracy and balanced accuracy per feature (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..eval.report import save_figure

    scores = result["scores"]
    x = np.arange(len(scores))
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    acc = [s["accuracy"] for s in scores]
    bal = [s["balanced_accuracy"] for s in scores]
    ax.bar(x - 0.2, acc, 0.4, label="accuracy", color="#1e90ff")
    ax.bar(x + 0.2, bal, 0.4, label="balanced accuracy", color="#ff8c00")
    for xi, a, b in zip(x, acc, bal):
        ax.text(xi - 0.2, a + 0.01, f"{a:.2f}", ha="center", fontsize=6)
        ax.text(xi + 0.2, b + 0.01, f"{b:.2f}", ha="center", fontsize=6)
    ax.set_xticks(x, [s["feature"] for s in scores], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("val", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{title}: {result['train_masks']} train / {result['val_masks']} val masks", fontsize=8)
    target = Path(path)
    save_figure(fig, target, dpi=100)
    return target
