"""Atomic file writes: a file appears complete under its final name, or not at all.

Why one home: a checkpoint, embedding, report, mask or upload that a reader (a resumed run,
the annotation page, ``list_records``) finds half-written is worse than a missing one -- it
is taken for a whole result. Every writer in segany therefore writes to a temporary file in
the target's own folder (so the final ``os.replace`` is one atomic rename on one file system)
and renames it into place only when the write succeeded. On any error the temporary file is
removed and an existing target is left exactly as it was.

Temporary names are hidden (leading ``.``), carry the target's name (so an error or a test
can tell which output it belonged to), a random part (two writers of one target never share
a temp), the marker :data:`PARTIAL_MARKER` and, last, the target's own suffix: libraries that
pick the format from the suffix (matplotlib ``savefig``, PIL ``save``, ``torch.save``,
safetensors, ONNX) then write the right format. Because such a name also matches a reader's
``*.json`` or ``*.png`` pattern while it exists, folder readers skip :func:`is_partial_file`
names, and :func:`remove_partial_files` clears those a killed process left behind.

Errors name the target, not the temporary file: an ``OSError`` about the temp (or about no
file at all, as a failed ``write`` is) is re-raised, same type, with the target's path.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_MARKER = ".partial"
"""Part of every temporary name (``.<name>.<random>.partial<suffix>``), what readers skip."""

_NAME_MAX = 255  # bytes in one path component on the common file systems
_RANDOM_BYTES = 4


def _temp_name(target: Path) -> str:
    """``.<name>.<random>.partial<suffix>``, with ``<name>`` shortened if the whole would not fit."""
    suffix = target.suffix
    tail = f".{secrets.token_hex(_RANDOM_BYTES)}{PARTIAL_MARKER}{suffix}"
    room = _NAME_MAX - 1 - len(tail.encode())
    name = target.name.encode()[:room].decode(errors="ignore")
    return f".{name}{tail}"


def _reserve(target: Path) -> Path:
    """Create the target's folder and an empty, new temporary file beside the target.

    Why not ``tempfile.mkstemp``: it creates the file with mode 0600, which ``os.replace``
    would carry over to the published file; ``os.open(..., 0o666)`` lets the umask decide,
    as a plain ``open(path, "w")`` of the target would. ``O_EXCL`` gives mkstemp's guarantee
    that no other writer's (or user's) file is ever reused.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = target.with_name(_temp_name(target))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # e.g. a read-only folder: say which output could not be written
            renamed = _naming_target(exc, {str(tmp): target})
            if renamed is not None:
                raise renamed from exc
            raise
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")  # pragma: no cover


def is_partial_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (by its name) a temporary file of an atomic write, done or abandoned.

    Also true for the older ``.<name>.<pid>.<random>.partial`` names of ``segany auto``.
    """
    name = Path(path).name
    if not name.startswith("."):
        return False
    return name.endswith(PARTIAL_MARKER) or Path(name).stem.endswith(PARTIAL_MARKER)


def remove_partial_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed writers left under ``folder`` (recursively); returns how many.

    Only safe when no other process is writing there: a live writer's temp would go too.
    """
    folder = Path(folder)
    n = 0
    if folder.is_dir():
        for f in folder.rglob(".*"):
            if is_partial_file(f) and f.is_file():
                f.unlink(missing_ok=True)
                n += 1
    return n


def _naming_target(exc: BaseException, temps: dict[str, Path]) -> BaseException | None:
    """``exc`` re-made to name the target, when it is an OSError about a temp (or about no file).

    Returns None when ``exc`` should propagate unchanged: not an OSError, about some other
    file (a missing input must keep its own name), about no file in a group of several (which
    one is unknown), or of a type that cannot be re-made.
    """
    if not isinstance(exc, OSError):
        return None
    named = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    hits = [temps[f] for f in named if f in temps]
    if hits:
        target = hits[0]
    elif not named and len(temps) == 1:  # e.g. a failed write(): no file named, one target
        target = next(iter(temps.values()))
    else:
        return None
    try:
        if exc.errno is not None:
            return type(exc)(exc.errno, exc.strerror or str(exc), str(target))
        return type(exc)(f"{exc}: {str(target)!r}")
    except Exception:  # a subclass with another constructor: keep the original
        return None


def _commit(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Rename every ``(tmp, target)`` in order; if one fails, remove the targets already renamed.

    Why remove rather than restore: this is how the group form always behaved -- a set of
    outputs in which some are new and some gone is visibly incomplete, one in which some are
    new and some old looks whole and is not.
    """
    renamed: list[Path] = []
    try:
        for tmp, target in pairs:
            os.replace(tmp, target)
            renamed.append(target)
    except BaseException:
        if len(renamed) < len(pairs):
            for target in renamed:
                target.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on a clean exit all are renamed into place, in order.

    Either every target gets its new file or none does: on an exception inside the block
    (or a failed rename) the temporary files are removed, targets renamed by this call are
    removed again, targets not reached are left untouched, and the error is raised.
    """
    targets = [Path(p) for p in paths]
    pairs: list[tuple[Path, Path]] = []
    try:
        for target in targets:
            pairs.append((_reserve(target), target))
        yield [tmp for tmp, _ in pairs]
        _commit(pairs)
    except BaseException as exc:
        for tmp, _ in pairs:
            tmp.unlink(missing_ok=True)
        renamed = _naming_target(exc, {str(tmp): target for tmp, target in pairs})
        if renamed is not None:
            raise renamed from exc
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    The temp has ``path``'s suffix, its folder is created, and on any exception inside the
    block it is removed and an existing ``path`` is left untouched.
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


def write_all_or_nothing(items: Sequence[tuple[str | os.PathLike, Callable[[Path], None]]]) -> None:
    """Write several files so that either all of them get their final names or none does.

    Why: a mask whose overlay failed to render (or a JSON whose overlay did) is a half
    result that a later run or a user would take for a whole one. :func:`atomic_paths` with
    one ``write(tmp)`` per target: every write runs first, into temporary names in the
    destination folders, and only when all succeeded are they renamed into place; a failing
    write's error names the output it was writing.
    """
    items = list(items)
    with atomic_paths([path for path, _ in items]) as temps:
        for tmp, (path, write) in zip(temps, items):
            try:
                write(tmp)
            except BaseException as exc:  # name this output (the group cannot tell which one failed)
                renamed = _naming_target(exc, {str(tmp): Path(path)})
                if renamed is not None:
                    raise renamed from exc
                raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 unless told); returns the path."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
) -> Path:
    """Write ``obj`` as JSON (``json.dumps`` with these options) to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, separators=separators))
