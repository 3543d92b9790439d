"""Per-image results of a long evaluation kept on disk, so an interrupted full run resumes.

Full runs are hours on a 2-core CPU (the mask decoder costs about 0.1 s per prompt: the
edge benchmark decodes 256 prompts per image and scores 99 thresholds x every annotator,
the proposals preset decodes 4096). A run killed by a session limit must not start over:
every finished image is written as one small JSON file under ``OUT/.resume/<experiment>/``,
next to a *signature* of everything that determines the results (the model weights'
fingerprint and the run's settings). A rerun with the same signature loads the finished
images instead of recomputing them; a run with another signature clears the stale files
first, so results of another model or setting never mix into a report.

Files are JSON (never pickle) and written atomically, so a kill mid-write loses at most the
image being written. Each record carries the seconds its image took, so a report can state
the compute time of the whole run, summed over the sessions that produced it.

A *partial* store (``--partial``) only reads: a report of the images finished so far, while
the run itself is still going on in another process or waits for the next session. It never
clears or writes records, and the runner (:mod:`segany.eval.runner`) leaves out the images it
does not hold.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from . import report

SIGNATURE_FILE = "signature.json"


class ResumeStore:
    """Finished images of one experiment: ``get(key)`` a stored record, ``put(key, record)`` a new one.

    Args:
        out_dir: the report folder; records go to ``out_dir/.resume/<experiment>/``.
        experiment: the experiment's name (one store per experiment and folder).
        signature: JSON-able description of the model and settings; records made under any
            other signature are deleted when the store opens.
        enabled: False turns the store off (every ``get`` misses, nothing is written), for
            ``--no-resume``; the old records are cleared so they cannot resurface later.
        partial: read-only, for a report of the finished images (see the module docstring):
            records of another signature are ignored, not deleted, and ``put`` is refused.
    """

    def __init__(
        self, out_dir: str | Path, experiment: str, signature: dict[str, Any], enabled: bool = True,
        partial: bool = False,
    ):
        if partial and not enabled:
            raise ValueError("--partial reports the stored images, so it cannot be combined with --no-resume")
        self.dir = Path(out_dir) / ".resume" / experiment
        self.enabled = enabled
        self.partial = partial
        self.signature = report._jsonable(signature)
        self.loaded = 0
        self.skipped = 0  # partial mode: images without a record, left out of the report
        self.seconds = 0.0  # compute seconds of every record got or put: the run's total, across sessions
        sig_path = self.dir / SIGNATURE_FILE
        stale = not enabled
        if sig_path.is_file():
            try:
                stale = stale or json.loads(sig_path.read_text()) != self.signature
            except (OSError, ValueError):
                stale = True
        elif partial:
            stale = True  # nothing of this signature was ever stored
        if partial:
            self.enabled = not stale  # read what matches; never delete what does not
            return
        if stale and self.dir.exists():
            shutil.rmtree(self.dir)
        if enabled and not sig_path.is_file():
            report.write_json(sig_path, self.signature)

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.dir / f"{digest}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key``, or None (not finished, unreadable, or store disabled)."""
        if not self.enabled:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged file is recomputed, never trusted
        if not isinstance(rec, dict) or rec.get("key") != key:
            return None
        self.loaded += 1
        self.seconds += float(rec["value"].get("seconds", 0.0) or 0.0)
        return rec["value"]

    def skip(self, rec: dict[str, Any] | None) -> bool:
        """True when the image of ``rec`` (a :meth:`get` result) must be left out: a partial
        report and no record. Counts it in :attr:`skipped`."""
        if rec is None and self.partial:
            self.skipped += 1
            return True
        return False

    def check_partial(self, what: str) -> None:
        """Fail clearly when a partial report would hold nothing."""
        if self.partial and self.loaded == 0:
            raise ValueError(
                f"--partial: no finished {what} in {self.dir} for this model and these settings; "
                "run the command without --partial first (it resumes and stores each image as it finishes)"
            )

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store the record of a finished image (atomically); a ``seconds`` field adds to :attr:`seconds`."""
        if self.partial:
            raise RuntimeError("a partial (read-only) store cannot store records")
        self.seconds += float(value.get("seconds", 0.0) or 0.0)
        if self.enabled:
            report.write_json(self._path(key), {"key": key, "value": value})
