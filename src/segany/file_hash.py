"""SHA-256 of a file's bytes, read in 1 MiB blocks: the one file checksum of the package.

Why a home of its own: several places record which exact file they used (the weights a
calibration was measured on, the images a probe embedded, the face-detector model) and
must agree on how that is computed; model digests (of loaded tensors, not files) live in
:mod:`segany.modeling.fingerprint`.
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, without reading it into memory at once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
