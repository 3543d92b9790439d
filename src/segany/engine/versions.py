"""The model-version registry: which model proposed a mask, what it was trained on, how it scored.

Where it lives: a ``model_versions`` table in the annotation store itself
(:class:`segany.engine.store.Store`), not a JSON file in the runs folder. Why:

- every mask already records its ``model_version`` in that store; with the registry beside
  it, the version a mask names and the row describing that version are in one database,
  written by the same transactional code, and can never drift apart as two files could
  (a registry copied without the database, or the other way round);
- ``segany serve --db DB --model-version NAME`` needs nothing but the ``--db`` it is given
  already, on SQLite and PostgreSQL alike (a shared PostgreSQL store gives every annotation
  machine the same registry; a JSON file would live on one disk);
- a row is written in one transaction, so a registration is all or nothing, and a name
  cannot be registered twice (the masks carrying it would otherwise mean two models).

The weights themselves stay files (``runs/cycleN/train/model.safetensors``): the row
records their absolute path, and loading a version whose file is gone names the file.

A version's *name* is what masks record, so it is short and plain (letters, digits,
``._@+-``). ``default`` stands for the shipped model and cannot be registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import ModelVersionRow, Store, StoreError

DEFAULT_BASE = "default"  # the shipped model (segany.default_model), as ``--base``
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")


class VersionError(ValueError):
    """An unknown, unusable or badly named model version."""


def check_name(name: str) -> str:
    """``name`` if it can name a model version, else a VersionError saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VersionError(
            f"model version name {name!r} must be 1-100 letters, digits or ._@+- (starting with a letter or digit)"
        )
    if name == DEFAULT_BASE:
        raise VersionError(f"{DEFAULT_BASE!r} names the shipped model and cannot be registered")
    return name


def register(store: Store, row: ModelVersionRow) -> ModelVersionRow:
    """Add ``row`` to the store's registry (one transaction); a taken name is a VersionError."""
    check_name(row.name)
    try:
        store.add_model_version(row)
    except StoreError as exc:
        raise VersionError(str(exc)) from None
    return row


def list_versions(store: Store) -> list[ModelVersionRow]:
    return store.model_versions()


def get_version(store: Store, name: str) -> ModelVersionRow:
    """The registered version ``name``, or a VersionError listing the registered ones."""
    versions = store.model_versions()
    for v in versions:
        if v.name == name:
            return v
    known = ", ".join(v.name for v in versions) or "none"
    raise VersionError(f"no model version {name!r} is registered in this store (registered: {known})")


def load_version_model(store: Store, name: str) -> tuple[Any, ModelVersionRow]:
    """The model of registered version ``name`` (CPU, float32, eval mode) and its row.

    The caller moves it where it runs (``segany serve --device``). It is flagged trained:
    whatever it started from, it is a model someone fine-tuned on purpose.
    """
    from ..modeling.registry import CheckpointError, build_model

    row = get_version(store, name)
    if not Path(row.weights).is_file():
        raise VersionError(f"model version {name!r}: its weights file {row.weights} is gone")
    try:
        model = build_model("auto", row.weights)
    except (CheckpointError, OSError, ValueError) as exc:
        raise VersionError(f"model version {name!r}: cannot load {row.weights}: {exc}") from None
    model.is_trained = True  # type: ignore[assignment]
    return model.eval(), row


@dataclass(frozen=True)
class Base:
    """What a cycle fine-tunes: the weights file and the name its masks were recorded under."""

    weights: Path
    parent: str  # the registered name, or the label a server running these weights records
    model: Any  # the loaded model (CPU), for an evaluation of the base


def resolve_base(store: Store, spec: str) -> Base:
    """``--base``: a registered version's name, ``default`` (the shipped model) or a checkpoint file.

    The parent's name is the one its masks carry: the registered name, or for the shipped
    model and plain files the label :func:`segany.engine.served_model.model_version_of` gives
    a server running them (so the lineage joins the masks in the report). A file that some
    registered version points at is that version.
    """
    from ..default_model import default_weights_path, load_default_model
    from ..modeling.registry import CheckpointError, build_model
    from .served_model import model_version_of

    names = {v.name: v for v in store.model_versions()}
    if spec in names:
        model, row = load_version_model(store, spec)
        return Base(Path(row.weights), row.name, model)
    if spec == DEFAULT_BASE:
        path = default_weights_path()
        if path is None:
            raise VersionError("--base default: this installation ships no trained default weights to fine-tune")
        model = load_default_model("cpu", warn=False)
        return Base(path, model_version_of(model), model)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(names) or "none registered"
        raise VersionError(
            f"--base {spec!r} is neither a registered model version ({known}), 'default', nor a checkpoint file"
        )
    for v in names.values():
        if Path(v.weights).resolve() == path.resolve():
            model, row = load_version_model(store, v.name)
            return Base(Path(row.weights), row.name, model)
    try:
        model = build_model("auto", path).eval()
    except (CheckpointError, OSError, ValueError) as exc:
        raise VersionError(f"--base {spec}: cannot load the checkpoint: {exc}") from None
    return Base(path.resolve(), model_version_of(model), model)
