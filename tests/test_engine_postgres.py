"""The annotation store on a real PostgreSQL server (Debian's packages), started for the test.

Slow set: ``pytest -m slow tests/test_engine_postgres.py``. The server runs from a fresh
data directory on a free loopback port and is stopped afterwards; as root it runs as the
``postgres`` user (PostgreSQL refuses to run as root). Skips, saying why, when the server
binaries or psycopg are missing (.ci/setup-extra.sh installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

from test_engine_store import exercise_store  # noqa: E402


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; .ci/setup-extra.sh does)")
    base = Path(tempfile.mkdtemp(prefix="segany-pg-"))
    data = base / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o755)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    log = base / "log.txt"
    subprocess.run(
        run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
                  "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on"],
        check=True, capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        for _ in range(100):
            try:
                psycopg.connect(url).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        yield url
    finally:
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_store_on_postgres(pg_url, tmp_path):
    from segany.engine.store import open_store

    store = open_store(pg_url)
    assert store.is_postgres
    exercise_store(store, tmp_path)
    assert open_store(pg_url).count_masks() == 46  # a new connection sees every committed save


def test_server_and_export_on_postgres(pg_url, tmp_path):
    import warnings

    import psycopg
    from fastapi.testclient import TestClient
    from PIL import Image

    from segany import load_default_model
    from segany.engine.export import export_dataset
    from segany.engine.server import ServerConfig, create_app
    from segany.engine.store import open_store
    from segany.masks import mask_to_rle, rle_to_mask

    with psycopg.connect(pg_url, autocommit=True) as conn:  # a fresh database for this test
        conn.execute("DROP DATABASE IF EXISTS engine_srv")
        conn.execute("CREATE DATABASE engine_srv")
    url = pg_url.rsplit("/", 1)[0] + "/engine_srv"
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "a.png")
    store = open_store(url)
    store.add_image(root / "a.png", 40, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_default_model()
    client = TestClient(create_app(ServerConfig(store=store, image_roots=[root], cache_dir=tmp_path / "c",
                                                token="t", model=model)))
    client.headers["Authorization"] = "Bearer t"
    m = np.zeros((30, 40), bool)
    m[5:9, 6:20] = True
    rle = mask_to_rle(m[None])[0]
    r = client.post("/api/images/1/masks", json={"size": rle["size"], "counts": [int(c) for c in rle["counts"]],
                                                 "seconds": 2.0, "client_id": "x"})
    assert r.status_code == 201
    assert client.post("/api/images/1/masks", json={"size": rle["size"], "counts": [int(c) for c in rle["counts"]],
                                                    "client_id": "x"}).json()["id"] == r.json()["id"]
    rows = client.get("/api/images/1/masks").json()
    assert len(rows) == 1 and np.array_equal(rle_to_mask(rows[0]["rle"]), m)
    assert export_dataset(open_store(url), tmp_path / "out") == {"images": 1, "masks": 1}
