"""The data engine's annotation store: images, masks and who made them, in SQL.

Why SQL and one transaction per save: an annotator's click on *accept* is acknowledged only
after the row is committed, so killing the server (even with ``kill -9``) never loses an
acknowledged mask and never leaves half a mask. SQLite in WAL mode (``synchronous=FULL``)
is the embedded default; teams point ``--db`` at a ``postgresql://`` URL and get the same
schema and behaviour from a real server.

Each mask records its ``source`` (manual / prefilled / automatic), ``annotator``,
``model_version`` and ``seconds`` spent, which :mod:`segany.engine.report` turns into the
paper's per-stage statistics. A client-chosen ``client_id`` makes saves idempotent: a save
retried after a lost reply returns the first row instead of duplicating the mask.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = ("manual", "prefilled", "automatic")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS images (
        id {pk},
        path TEXT NOT NULL UNIQUE,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        added_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS masks (
        id {pk},
        image_id INTEGER NOT NULL REFERENCES images(id),
        client_id TEXT UNIQUE,
        rle TEXT NOT NULL,
        area INTEGER NOT NULL,
        bbox TEXT NOT NULL,
        source TEXT NOT NULL,
        annotator TEXT NOT NULL,
        model_version TEXT NOT NULL,
        seconds DOUBLE PRECISION NOT NULL,
        score DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        deleted_at DOUBLE PRECISION,
        replaces INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS masks_image ON masks(image_id)",
]


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: str
    width: int
    height: int


@dataclass(frozen=True)
class MaskRow:
    id: int
    image_id: int
    rle: dict[str, Any]  # COCO (compressed) RLE, counts as str
    area: int
    bbox: list[float]  # XYWH
    source: str
    annotator: str
    model_version: str
    seconds: float
    score: float | None
    created_at: float
    client_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image_id": self.image_id,
            "rle": self.rle,
            "area": self.area,
            "bbox": self.bbox,
            "source": self.source,
            "annotator": self.annotator,
            "model_version": self.model_version,
            "seconds": self.seconds,
            "score": self.score,
            "created_at": self.created_at,
        }


class StoreError(ValueError):
    """Bad input to the store (unknown image, bad source, malformed mask)."""


class Store:
    """SQL store over SQLite (a file path) or PostgreSQL (a ``postgresql://`` URL).

    Thread-safe: every operation takes its own connection (PostgreSQL) or serialises on
    one connection (SQLite, where writers are serialised by the database anyway).
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self.is_postgres = self.url.startswith(("postgresql://", "postgres://"))
        self._lock = threading.RLock()
        if self.is_postgres:
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                raise RuntimeError("a postgresql:// store needs psycopg (pip install 'psycopg[binary]')") from exc
            self._pk = "SERIAL PRIMARY KEY"
            self._conn = None
        else:
            path = Path(self.url)
            if path.parent and not path.parent.exists():
                raise StoreError(f"database folder does not exist: {path.parent}")
            self._pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
            self._conn = sqlite3.connect(self.url, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # acknowledged = on disk
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
        with self._transaction() as cur:
            for stmt in _SCHEMA:
                cur.execute(stmt.format(pk=self._pk))

    # ------------------------------------------------------------------ plumbing

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self.is_postgres else query

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One transaction: committed when the block ends, rolled back on any error."""
        if self.is_postgres:
            import psycopg

            with psycopg.connect(self.url) as conn:  # commits on success, rolls back on error
                with conn.cursor() as cur:
                    yield _Cursor(cur, self._sql)
            return
        with self._lock:
            assert self._conn is not None
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield _Cursor(cur, self._sql)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        if self._conn is not None:
            with self._lock:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ images

    def add_image(self, path: str | Path, width: int, height: int) -> int:
        """Register an image (idempotent on its resolved path); returns its id."""
        key = str(Path(path).resolve())
        if width <= 0 or height <= 0:
            raise StoreError(f"image size must be positive, got {width}x{height}")
        with self._transaction() as cur:
            cur.execute("SELECT id FROM images WHERE path = ?", (key,))
            row = cur.fetchone()
            if row:
                return int(row[0])
            cur.execute(
                "INSERT INTO images (path, width, height, added_at) VALUES (?, ?, ?, ?) RETURNING id",
                (key, int(width), int(height), time.time()),
            )
            return int(cur.fetchone()[0])

    def images(self) -> list[ImageRow]:
        with self._transaction() as cur:
            cur.execute("SELECT id, path, width, height FROM images ORDER BY id")
            return [ImageRow(int(r[0]), r[1], int(r[2]), int(r[3])) for r in cur.fetchall()]

    def image(self, image_id: int) -> ImageRow:
        with self._transaction() as cur:
            cur.execute("SELECT id, path, width, height FROM images WHERE id = ?", (int(image_id),))
            r = cur.fetchone()
        if r is None:
            raise StoreError(f"no image with id {image_id}")
        return ImageRow(int(r[0]), r[1], int(r[2]), int(r[3]))

    # ------------------------------------------------------------------ masks

    def save_mask(
        self,
        image_id: int,
        rle: dict[str, Any],
        *,
        source: str,
        annotator: str,
        model_version: str,
        seconds: float,
        score: float | None = None,
        client_id: str | None = None,
        replaces: int | None = None,
    ) -> int:
        """Store one mask (COCO RLE) in one transaction; returns its id.

        ``replaces`` deletes an earlier mask of the same image in the same transaction (an
        edited pre-filled mask). With ``client_id``, a repeated save returns the first id.
        """
        from ..masks import area_from_rle

        if source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")
        if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or len(rle.get("size", ())) != 2:
            raise StoreError("rle must be a COCO RLE {'size': [h, w], 'counts': str}")
        if not (seconds >= 0.0) or seconds > 1e7:
            raise StoreError(f"seconds must be a non-negative duration, got {seconds}")
        area = int(area_from_rle(rle))
        bbox = _rle_bbox(rle)
        now = time.time()
        with self._transaction() as cur:
            if client_id is not None:
                cur.execute("SELECT id FROM masks WHERE client_id = ?", (client_id,))
                row = cur.fetchone()
                if row:
                    return int(row[0])
            cur.execute("SELECT width, height FROM images WHERE id = ?", (int(image_id),))
            img = cur.fetchone()
            if img is None:
                raise StoreError(f"no image with id {image_id}")
            if [int(img[1]), int(img[0])] != [int(v) for v in rle["size"]]:
                raise StoreError(f"mask size {rle['size']} does not match the image's {[img[1], img[0]]} (h, w)")
            if replaces is not None:
                cur.execute(
                    "UPDATE masks SET deleted_at = ? WHERE id = ? AND image_id = ? AND deleted_at IS NULL",
                    (now, int(replaces), int(image_id)),
                )
            cur.execute(
                "INSERT INTO masks (image_id, client_id, rle, area, bbox, source, annotator, model_version, seconds,"
                " score, created_at, replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    int(image_id),
                    client_id,
                    json.dumps(rle),
                    area,
                    json.dumps(bbox),
                    source,
                    annotator,
                    model_version,
                    float(seconds),
                    None if score is None else float(score),
                    now,
                    replaces,
                ),
            )
            return int(cur.fetchone()[0])

    def delete_mask(self, mask_id: int) -> bool:
        """Mark a mask deleted (kept for the statistics); False if there was none."""
        with self._transaction() as cur:
            cur.execute("UPDATE masks SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", (time.time(), int(mask_id)))
            return cur.rowcount > 0

    def masks(self, image_id: int | None = None, include_deleted: bool = False) -> list[MaskRow]:
        query = (
            "SELECT id, image_id, rle, area, bbox, source, annotator, model_version, seconds, score, created_at,"
            " client_id FROM masks"
        )
        where, args = [], []
        if image_id is not None:
            where.append("image_id = ?")
            args.append(int(image_id))
        if not include_deleted:
            where.append("deleted_at IS NULL")
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._transaction() as cur:
            cur.execute(query + " ORDER BY id", tuple(args))
            rows = cur.fetchall()
        return [
            MaskRow(
                int(r[0]), int(r[1]), json.loads(r[2]), int(r[3]), json.loads(r[4]), r[5], r[6], r[7],
                float(r[8]), None if r[9] is None else float(r[9]), float(r[10]), r[11],
            )
            for r in rows
        ]

    def count_masks(self) -> int:
        with self._transaction() as cur:
            cur.execute("SELECT COUNT(*) FROM masks WHERE deleted_at IS NULL")
            return int(cur.fetchone()[0])


class _Cursor:
    """A cursor that rewrites ``?`` placeholders for the backend."""

    def __init__(self, cur: Any, sql: Any) -> None:
        self._cur = cur
        self._sql = sql

    def execute(self, query: str, args: tuple = ()) -> None:
        self._cur.execute(self._sql(query), args)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


def _rle_bbox(rle: dict[str, Any]) -> list[float]:
    from pycocotools import mask as mask_utils

    coco = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in mask_utils.toBbox(coco)]


def open_store(url: str | Path) -> Store:
    """Open (creating if needed) the store at a SQLite path or a ``postgresql://`` URL."""
    return Store(url)
