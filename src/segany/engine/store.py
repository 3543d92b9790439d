"""The data engine's annotation store: images, masks and who made them, in SQL.

Why SQL and one transaction per save: an annotator's click on *accept* is acknowledged only
after the row is committed, so killing the server (even with ``kill -9``) never loses an
acknowledged mask and never leaves half a mask. SQLite in WAL mode (``synchronous=FULL``)
is the embedded default; teams point ``--db`` at a ``postgresql://`` URL and get the same
schema and behaviour from a real server.

Each mask records its ``source`` (manual / prefilled / automatic), ``annotator``,
``model_version``, ``seconds`` spent and ``clicks`` (prompts) used, which
:mod:`segany.engine.report` turns into the paper's per-stage statistics. A client-chosen
``client_id`` makes saves idempotent: a save retried after a lost reply returns the first
row instead of duplicating the mask. The registry of model versions
(:mod:`segany.engine.versions`) is a table here too.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..masks import coco_rle_bbox

log = logging.getLogger(__name__)

SOURCES = ("manual", "prefilled", "automatic")
MAX_ID = 2**63 - 1  # SQLite and PostgreSQL BIGINT: larger ids cannot exist (and overflow the drivers)
MAX_CLIENT_ID = 200

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
        replaces INTEGER,
        clicks INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS masks_image ON masks(image_id)",
    # The model-version registry (segany.engine.versions says why it lives here).
    """CREATE TABLE IF NOT EXISTS model_versions (
        id {pk},
        name TEXT NOT NULL UNIQUE,
        parent TEXT,
        weights TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        images INTEGER NOT NULL,
        masks INTEGER NOT NULL,
        by_source TEXT NOT NULL,
        metrics TEXT NOT NULL,
        details TEXT NOT NULL
    )""",
    # The mask-quality rating study (segany.engine.ratings): the pool (store masks and imported
    # ground truth, each under a random opaque id) and one rating per (item, annotator).
    """CREATE TABLE IF NOT EXISTS rating_items (
        id TEXT PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id),
        mask_id INTEGER UNIQUE REFERENCES masks(id),
        gt_key TEXT UNIQUE,
        rle TEXT,
        source TEXT NOT NULL,
        model_version TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ratings (
        id {pk},
        item_id TEXT NOT NULL REFERENCES rating_items(id),
        annotator TEXT NOT NULL,
        rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 10),
        seconds DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (item_id, annotator)
    )""",
]

# Columns added after the first release: (table, column, SQL type). A database created by an
# older version gets them on open (ALTER TABLE ... ADD COLUMN), so old stores keep working;
# their old rows hold NULL there.
_ADDED_COLUMNS = [
    ("masks", "clicks", "INTEGER"),  # prompts (clicks and boxes) the page used for the mask; NULL = not recorded
]
MAX_CLICKS = 100_000


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
    bbox: list[float]  # XYWH in COCO's toBbox convention (w = x_max - x_min + 1), see _rle_bbox
    source: str
    annotator: str
    model_version: str
    seconds: float
    score: float | None
    created_at: float
    client_id: str | None
    clicks: int | None = None  # prompts the page used; None: not recorded (older rows, API saves without it)

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
            "clicks": self.clicks,
        }


@dataclass(frozen=True)
class ModelVersionRow:
    """One registered model version (see :mod:`segany.engine.versions`)."""

    name: str
    parent: str | None  # the version it was fine-tuned from (a registered name or a served model's label)
    weights: str  # absolute path of its safetensors file
    created_at: float
    images: int  # training data from the store: images and masks exported
    masks: int
    by_source: dict[str, int]  # exported masks per source (manual / prefilled / automatic)
    metrics: dict[str, Any]
    details: dict[str, Any]  # how it was made: base config, steps, base data, eval settings, timings

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parent": self.parent,
            "weights": self.weights,
            "created_at": self.created_at,
            "images": self.images,
            "masks": self.masks,
            "by_source": self.by_source,
            "metrics": self.metrics,
            "details": self.details,
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
        self._conn: sqlite3.Connection | None = None
        if self.is_postgres:
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                raise RuntimeError("a postgresql:// store needs psycopg (pip install 'psycopg[binary]')") from exc
            self._pk = "SERIAL PRIMARY KEY"
        else:
            path = Path(self.url)
            if path.parent and not path.parent.exists():
                raise StoreError(f"database folder does not exist: {path.parent}")
            if path.is_dir():
                raise StoreError(f"--db {self.url} is a folder, not a database file")
            self._pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
        try:
            if not self.is_postgres:
                self._conn = sqlite3.connect(self.url, timeout=30.0, isolation_level=None, check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")  # acknowledged = on disk
                self._conn.execute("PRAGMA foreign_keys=ON")
                self._conn.execute("PRAGMA busy_timeout=30000")
            with self._transaction() as cur:
                for stmt in _SCHEMA:
                    cur.execute(stmt.format(pk=self._pk))
                self._add_missing_columns(cur)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(_sqlite_open_error(self.url, exc)) from None
        except Exception as exc:
            if not self.is_postgres or not _is_psycopg_error(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # The URL may hold a password: name the server's complaint, not the URL.
            raise StoreError(f"cannot open the PostgreSQL annotation database: {first}") from None

    # ------------------------------------------------------------------ plumbing

    def _add_missing_columns(self, cur: Any) -> None:
        """Add the columns of ``_ADDED_COLUMNS`` that a database made by an older version lacks.

        Runs in the schema transaction, so two processes opening one old SQLite file add each
        column once (``BEGIN IMMEDIATE`` serialises them); PostgreSQL's ``ADD COLUMN IF NOT
        EXISTS`` makes the same step safe there.
        """
        for table, column, kind in _ADDED_COLUMNS:
            if self.is_postgres:
                cur.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
                continue
            cur.execute(f"PRAGMA table_info({table})")
            if column not in {str(r[1]) for r in cur.fetchall()}:
                log.info("adding column %s.%s to %s", table, column, self.url)
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

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

    @staticmethod
    def _check_id(value: int, name: str) -> int:
        """Ids beyond BIGINT cannot be stored; refusing them here keeps the drivers from
        raising OverflowError (a server error) on a client's typo."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (1 <= value <= MAX_ID):
            raise StoreError(f"{name} must be an integer between 1 and 2**63 - 1, got {value!r}")
        return int(value)

    # ------------------------------------------------------------------ images

    def add_image(self, path: str | Path, width: int, height: int) -> int:
        """Register an image (idempotent on its resolved path); returns its id."""
        key = str(Path(path).resolve())
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (width, height)):
            raise StoreError(f"image size must be integers, got {width!r}x{height!r}")
        if not (0 < width < 2**31 and 0 < height < 2**31):
            raise StoreError(f"image size must be positive (and below 2**31), got {width}x{height}")
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
        self._check_id(image_id, "image id")
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
        clicks: int | None = None,
    ) -> int:
        """Store one mask (COCO RLE) in one transaction; returns its id.

        ``replaces`` deletes an earlier mask of the same image in the same transaction (an
        edited pre-filled mask). With ``client_id``, a repeated save returns the first id.
        ``clicks``: how many prompts (clicks, boxes) the annotator used, for the report.
        """
        from ..masks import area_from_rle, validate_rle

        self._check_id(image_id, "image id")
        if replaces is not None:
            self._check_id(replaces, "replaces")
        if source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")
        try:
            # Everything that reads masks later trusts the RLE: check it completely first.
            rle = validate_rle(rle)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not (0.0 <= seconds <= 1e7):
            raise StoreError(f"seconds must be a non-negative duration (at most 1e7), got {seconds}")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score)
        ):
            raise StoreError(f"score must be a finite number or null, got {score}")
        if clicks is not None and (
            isinstance(clicks, bool) or not isinstance(clicks, numbers.Integral) or not 0 <= clicks <= MAX_CLICKS
        ):
            raise StoreError(f"clicks must be an integer between 0 and {MAX_CLICKS} or null, got {clicks!r}")
        if client_id is not None and (not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID):
            raise StoreError(f"client_id must be a non-empty string of at most {MAX_CLIENT_ID} characters")
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
                cur.execute("SELECT image_id FROM masks WHERE id = ?", (int(replaces),))
                old = cur.fetchone()
                if old is None or int(old[0]) != int(image_id):
                    raise StoreError(f"replaces: no mask {replaces} on image {image_id}")
                cur.execute(
                    "UPDATE masks SET deleted_at = ? WHERE id = ? AND image_id = ? AND deleted_at IS NULL",
                    (now, int(replaces), int(image_id)),
                )
            cur.execute(
                "INSERT INTO masks (image_id, client_id, rle, area, bbox, source, annotator, model_version, seconds,"
                " score, created_at, replaces, clicks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
                    None if clicks is None else int(clicks),
                ),
            )
            return int(cur.fetchone()[0])

    def delete_mask(self, mask_id: int) -> bool:
        """Mark a mask deleted (kept for the statistics); False if there was none."""
        self._check_id(mask_id, "mask id")
        with self._transaction() as cur:
            cur.execute("UPDATE masks SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", (time.time(), int(mask_id)))
            return cur.rowcount > 0

    def masks(
        self,
        image_id: int | None = None,
        include_deleted: bool = False,
        *,
        skipped: list[tuple[int, str]] | None = None,
    ) -> list[MaskRow]:
        """Stored masks, oldest first; rows that cannot be read are skipped, not raised.

        Why skip: a database written by an older version may hold a row with a malformed
        RLE (accepted before saves were validated). Raising would break every reader of
        the image (the page's mask list, export, report) for one bad row, so each row is
        checked against its image's size; a bad one is logged and, when ``skipped`` is
        given, appended to it as ``(mask_id, reason)``.
        """
        from ..masks import validate_rle

        query = (
            "SELECT m.id, m.image_id, m.rle, m.area, m.bbox, m.source, m.annotator, m.model_version, m.seconds,"
            " m.score, m.created_at, m.client_id, i.height, i.width, m.clicks"
            " FROM masks m LEFT JOIN images i ON i.id = m.image_id"
        )
        where, args = [], []
        if image_id is not None:
            where.append("m.image_id = ?")
            args.append(self._check_id(image_id, "image id"))
        if not include_deleted:
            where.append("m.deleted_at IS NULL")
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._transaction() as cur:
            cur.execute(query + " ORDER BY m.id", tuple(args))
            rows = cur.fetchall()
        out = []
        for r in rows:
            try:
                if r[12] is None:
                    raise ValueError(f"its image {r[1]} is not in the store")
                rle = validate_rle(json.loads(r[2]), (int(r[12]), int(r[13])))
                bbox = [float(v) for v in json.loads(r[4])]
                if len(bbox) != 4:
                    raise ValueError("bbox is not 4 numbers")
                score = None if r[9] is None else float(r[9])
                row = MaskRow(
                    int(r[0]), int(r[1]), rle, int(r[3]), bbox, str(r[5]), str(r[6]), str(r[7]),
                    float(r[8]), score if score is None or math.isfinite(score) else None, float(r[10]), r[11],
                    None if r[14] is None else int(r[14]),
                )
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("skipping unreadable mask %s of image %s: %s", r[0], r[1], reason)
                if skipped is not None:
                    skipped.append((int(r[0]), reason))
                continue
            out.append(row)
        return out

    def mask_counts(self) -> dict[int, int]:
        """{image_id: number of live masks}, counted by the database (cheap for the image list)."""
        with self._transaction() as cur:
            cur.execute("SELECT image_id, COUNT(*) FROM masks WHERE deleted_at IS NULL GROUP BY image_id")
            return {int(r[0]): int(r[1]) for r in cur.fetchall()}

    def count_masks(self) -> int:
        with self._transaction() as cur:
            cur.execute("SELECT COUNT(*) FROM masks WHERE deleted_at IS NULL")
            return int(cur.fetchone()[0])

    # ------------------------------------------------------------------ model versions

    def add_model_version(self, row: ModelVersionRow) -> None:
        """Register a model version in one transaction; a name already registered is refused.

        Why refuse rather than replace: masks in this store already carry the name as their
        ``model_version``, so a second meaning for it would make the statistics lie.
        """
        if not isinstance(row.name, str) or not row.name:
            raise StoreError("a model version needs a non-empty name")
        with self._transaction() as cur:
            cur.execute("SELECT weights FROM model_versions WHERE name = ?", (row.name,))
            if cur.fetchone() is not None:
                raise StoreError(f"model version {row.name!r} is already registered in this store")
            cur.execute(
                "INSERT INTO model_versions (name, parent, weights, created_at, images, masks, by_source, metrics,"
                " details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.name, row.parent, row.weights, float(row.created_at), int(row.images), int(row.masks),
                    json.dumps(row.by_source), json.dumps(row.metrics), json.dumps(row.details),
                ),
            )

    def model_versions(self) -> list[ModelVersionRow]:
        """Every registered model version, oldest first."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT name, parent, weights, created_at, images, masks, by_source, metrics, details"
                " FROM model_versions ORDER BY id"
            )
            rows = cur.fetchall()
        return [
            ModelVersionRow(str(r[0]), None if r[1] is None else str(r[1]), str(r[2]), float(r[3]), int(r[4]),
                            int(r[5]), json.loads(r[6]), json.loads(r[7]), json.loads(r[8]))
            for r in rows
        ]

    # ------------------------------------------------------------------ mask-quality ratings

    @staticmethod
    def _check_item_id(item_id: str) -> str:
        if not isinstance(item_id, str) or len(item_id) != 16 or item_id.strip("0123456789abcdef"):
            raise StoreError(f"a rating item id is 16 hexadecimal digits, got {str(item_id)[:40]!r}")
        return item_id

    def sync_rating_items(self) -> int:
        """Give every live mask without one a rating item (a random opaque id); returns how many were added.

        Why a random id rather than the mask's: the page must not learn anything about a
        mask's origin, and ids counted up in saving order would tell old from new (and store
        masks from ground truth imported later). ``ON CONFLICT DO NOTHING`` lets two servers
        sync the same store at once.
        """
        import secrets

        with self._transaction() as cur:
            cur.execute(
                "SELECT m.id, m.image_id, m.source, m.model_version FROM masks m LEFT JOIN rating_items r"
                " ON r.mask_id = m.id WHERE r.id IS NULL AND m.deleted_at IS NULL ORDER BY m.id"
            )
            missing = cur.fetchall()
            now = time.time()
            added = 0
            for mask_id, image_id, source, version in missing:
                cur.execute(
                    "INSERT INTO rating_items (id, image_id, mask_id, source, model_version, added_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (secrets.token_hex(8), int(image_id), int(mask_id), str(source), str(version), now),
                )
                added += max(0, cur.rowcount)
        return added

    def add_ground_truth(self, masks: list[GroundTruthMask]) -> int:
        """Add ground-truth masks to the rating pool in one transaction (all or none); returns how many were new.

        Their images are registered as :meth:`add_image` does (an image already in the store
        must have the same size); the masks go to ``rating_items`` with source
        ``ground_truth``, never to ``masks``, so exports and the engine statistics never see
        them. Every RLE is checked completely against its image's size before anything is
        written; a mask imported before (same ``key``) is not added again.
        """
        import secrets

        from ..masks import validate_rle

        checked = []
        for gt in masks:
            try:
                rle = validate_rle(gt.rle, (gt.height, gt.width), field=f"{gt.label} segmentation")
            except ValueError as exc:
                raise StoreError(str(exc)) from None
            checked.append((str(Path(gt.image_path).resolve()), gt, rle))
        now = time.time()
        added = 0
        image_ids: dict[str, int] = {}
        with self._transaction() as cur:
            for path, gt, rle in checked:
                if path not in image_ids:
                    cur.execute("SELECT id, width, height FROM images WHERE path = ?", (path,))
                    row = cur.fetchone()
                    if row is None:
                        cur.execute(
                            "INSERT INTO images (path, width, height, added_at) VALUES (?, ?, ?, ?) RETURNING id",
                            (path, int(gt.width), int(gt.height), now),
                        )
                        row = (cur.fetchone()[0], gt.width, gt.height)
                    elif (int(row[1]), int(row[2])) != (gt.width, gt.height):
                        raise StoreError(
                            f"{gt.label}: the store has {Path(path).name} as {row[1]}x{row[2]} pixels, the record "
                            f"says {gt.width}x{gt.height}"
                        )
                    image_ids[path] = int(row[0])
                cur.execute(
                    "INSERT INTO rating_items (id, image_id, gt_key, rle, source, model_version, added_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (secrets.token_hex(8), image_ids[path], gt.key, json.dumps(rle), GROUND_TRUTH, "", now),
                )
                added += max(0, cur.rowcount)
        return added

    def rating_pool(self, annotator: str | None = None) -> list[PoolEntry]:
        """The rateable items (imported ground truth and masks not deleted), each with whether
        ``annotator`` has rated it."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT r.id, r.image_id, EXISTS (SELECT 1 FROM ratings x WHERE x.item_id = r.id AND x.annotator = ?)"
                " FROM rating_items r LEFT JOIN masks m ON m.id = r.mask_id"
                " WHERE r.mask_id IS NULL OR m.deleted_at IS NULL ORDER BY r.id",
                (annotator or "",),
            )
            return [PoolEntry(str(r[0]), int(r[1]), bool(r[2])) for r in cur.fetchall()]

    def rating_item(self, item_id: str) -> RatingItem:
        """One item of the pool with its mask, checked against its image's size; a
        :class:`StoreError` if there is none, its mask was deleted, or the row cannot be read."""
        from ..masks import validate_rle

        self._check_item_id(item_id)
        with self._transaction() as cur:
            cur.execute(
                "SELECT r.id, r.image_id, r.source, r.model_version, COALESCE(r.rle, m.rle), r.mask_id, m.deleted_at,"
                " i.height, i.width FROM rating_items r LEFT JOIN masks m ON m.id = r.mask_id"
                " LEFT JOIN images i ON i.id = r.image_id WHERE r.id = ?",
                (item_id,),
            )
            r = cur.fetchone()
        if r is None:
            raise StoreError(f"no rating item {item_id}")
        if r[5] is not None and r[6] is not None:
            raise StoreError(f"rating item {item_id} is no longer in the pool (its mask was deleted)")
        try:
            rle = validate_rle(json.loads(r[4]), (int(r[7]), int(r[8])))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"rating item {item_id} cannot be read: {str(exc).splitlines()[0]}") from None
        return RatingItem(str(r[0]), int(r[1]), rle, str(r[2]), str(r[3]))

    def save_rating(self, item_id: str, annotator: str, rating: int, seconds: float = 0.0) -> tuple[int, bool]:
        """Store one rating in one transaction; returns (rating id, whether it is new).

        A rating is final: the same rating again returns the first row (a request retried
        after a lost reply), another value raises :class:`RatingConflict`. Why final: the
        study measures a blind first judgement; one revised after seeing other masks is not.
        """
        self._check_item_id(item_id)
        if isinstance(rating, bool) or not isinstance(rating, numbers.Integral) or not RATING_MIN <= rating <= RATING_MAX:
            raise StoreError(f"rating must be an integer from {RATING_MIN} to {RATING_MAX}, got {rating!r}")
        if not isinstance(annotator, str) or not annotator.strip() or len(annotator) > 200:
            raise StoreError("annotator must be a non-empty name of at most 200 characters")
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not (0.0 <= seconds <= 1e7):
            raise StoreError(f"seconds must be a non-negative duration (at most 1e7), got {seconds}")
        with self._transaction() as cur:
            cur.execute(
                "SELECT r.mask_id, m.deleted_at FROM rating_items r LEFT JOIN masks m ON m.id = r.mask_id WHERE r.id = ?",
                (item_id,),
            )
            item = cur.fetchone()
            if item is None:
                raise StoreError(f"no rating item {item_id}")
            if item[0] is not None and item[1] is not None:
                raise StoreError(f"rating item {item_id} is no longer in the pool (its mask was deleted)")
            cur.execute(
                "INSERT INTO ratings (item_id, annotator, rating, seconds, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (item_id, annotator) DO NOTHING RETURNING id",
                (item_id, annotator, int(rating), float(seconds), time.time()),
            )
            row = cur.fetchone()
            if row is not None:
                return int(row[0]), True
            cur.execute("SELECT id, rating FROM ratings WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            old = cur.fetchone()
        if int(old[1]) != int(rating):
            raise RatingConflict(f"{annotator} already rated item {item_id} {old[1]}; a rating is final")
        return int(old[0]), False

    def ratings(self) -> list[RatingRow]:
        """Every rating with its item's source and model version, oldest first; ``live`` is
        False for a rating of a mask deleted since."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT x.item_id, r.source, r.model_version, x.annotator, x.rating, x.seconds, x.created_at,"
                " (r.mask_id IS NULL OR m.deleted_at IS NULL) FROM ratings x JOIN rating_items r ON r.id = x.item_id"
                " LEFT JOIN masks m ON m.id = r.mask_id ORDER BY x.id"
            )
            rows = cur.fetchall()
        return [
            RatingRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), float(r[5]), float(r[6]), bool(r[7]))
            for r in rows
        ]


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
    """The ``bbox`` column of a mask: COCO's ``toBbox`` XYWH (pixel extents, ``w = x_max -
    x_min + 1``), not SA-1B's (pixel indices, ``w = x_max - x_min``).

    Why COCO's: every database ever written holds these, the API returns them, and the
    export's ``coco.json`` is where they go. The SA-1B export does not read this column; it
    computes the official box from the RLE (:func:`segany.data.sa1b.mask_bbox`).
    """
    return coco_rle_bbox(rle)


def _sqlite_open_error(url: str, exc: Exception) -> str:
    """One line saying why an SQLite database could not be opened, and what to do."""
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"--db {url} is not an SQLite database ({text}); give a new file name or an existing segany database"
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return (
            f"cannot open the annotation database {url} for writing ({text}): the file and its folder must be "
            "writable (SQLite keeps -wal and -shm files beside it)"
        )
    return f"cannot open the annotation database {url}: {text}"


def _is_psycopg_error(exc: Exception) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, psycopg.Error)


def open_store(url: str | Path) -> Store:
    """Open (creating if needed) the store at a SQLite path or a ``postgresql://`` URL."""
    return Store(url)


# ---------------------------------------------------------------------- mask-quality ratings

GROUND_TRUTH = "ground_truth"  # the source of masks imported for the rating study (never in ``masks``)
RATING_MIN, RATING_MAX = 1, 10


class RatingConflict(StoreError):
    """The annotator already rated this item with another value (a rating is final)."""


@dataclass(frozen=True)
class GroundTruthMask:
    """One ground-truth mask for the rating pool: its image, its COCO RLE and its identity."""

    image_path: Path
    width: int
    height: int
    key: str  # the same mask on a later import has the same key (image path + annotation id): added once
    rle: dict[str, Any]
    label: str  # names it in error messages ("sa_1.json annotation 3")


@dataclass(frozen=True)
class PoolEntry:
    item_id: str
    image_id: int
    rated: bool  # by the annotator :meth:`Store.rating_pool` was asked about


@dataclass(frozen=True)
class RatingItem:
    """A rateable mask. ``source`` and ``model_version`` are for the statistics, never for the page."""

    id: str
    image_id: int
    rle: dict[str, Any]
    source: str
    model_version: str


@dataclass(frozen=True)
class RatingRow:
    item_id: str
    source: str
    model_version: str
    annotator: str
    rating: int
    seconds: float
    created_at: float
    live: bool  # False once the rated mask was deleted from the store
