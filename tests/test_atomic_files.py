"""segany.atomic_files: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from segany.atomic_files import (
    PARTIAL_MARKER,
    atomic_path,
    atomic_paths,
    is_partial_file,
    remove_partial_files,
    write_all_or_nothing,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writers_write_the_content(tmp_path):
    assert write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    write_text_atomic(tmp_path / "b.txt", "héllo\n")
    write_json_atomic(tmp_path / "c.json", {"k": [1, 2]}, indent=2)
    write_json_atomic(tmp_path / "d.json", {"k": 1}, separators=(",", ":"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "c.json").read_text() == json.dumps({"k": [1, 2]}, indent=2)
    assert (tmp_path / "d.json").read_text() == '{"k":1}'
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json", "d.json"]  # no temp left


def test_overwrite_replaces_the_old_file(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and _names(tmp_path) == ["t.txt"]


def test_exception_inside_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            seen.append(tmp)
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["t.txt"] and not seen[0].exists()
    with pytest.raises(KeyboardInterrupt):  # an interrupt is cleaned up too
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and _names(tmp_path) == ["t.txt"]


def test_temp_is_hidden_beside_target_with_its_suffix(tmp_path):
    target = tmp_path / "fig.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".fig.png.") and tmp.suffix == ".png"
        assert PARTIAL_MARKER in tmp.name and is_partial_file(tmp)
        assert tmp.exists() and not target.exists()  # reserved, not yet published
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    with atomic_path(tmp_path / "noext") as tmp:
        assert tmp.name.startswith(".noext.") and tmp.name.endswith(PARTIAL_MARKER)
        assert is_partial_file(tmp)
    assert not is_partial_file(target) and not is_partial_file(tmp_path / ".hidden.png")
    assert is_partial_file(tmp_path / ".m.json.1234.ab12cd.partial")  # the older auto/ names


def test_suffix_lets_libraries_pick_the_format(tmp_path):
    from PIL import Image

    target = tmp_path / "x.png"
    with atomic_path(target) as tmp:
        Image.new("RGB", (3, 2)).save(tmp)  # no format= given: PIL infers it from the suffix
    with Image.open(target) as im:
        assert im.format == "PNG" and im.size == (3, 2)


def test_two_writes_of_one_target_use_different_temps(tmp_path):
    target = tmp_path / "t.txt"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the outer block finished last
    assert _names(tmp_path) == ["t.txt"]


def test_long_target_names_still_fit(tmp_path):
    target = tmp_path / ("n" * 240 + ".png")
    with atomic_path(target) as tmp:
        assert len(tmp.name.encode()) <= 255 and tmp.suffix == ".png"
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_parent_folder_created(tmp_path):
    target = tmp_path / "a" / "b" / "t.json"
    write_json_atomic(target, [1])
    assert json.loads(target.read_text()) == [1]
    write_all_or_nothing([(tmp_path / "c" / "d.txt", lambda t: t.write_text("d"))])
    assert (tmp_path / "c" / "d.txt").read_text() == "d"


def test_mode_follows_the_umask(tmp_path):
    """A published file has the mode a plain open() would give it (not mkstemp's 0600)."""
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == 0o644


def test_errors_name_the_target_not_the_temp(tmp_path):
    target = tmp_path / "t.txt"

    def failing(tmp: Path) -> None:
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space left") as info:
        with atomic_path(target) as tmp:
            failing(tmp)
    assert info.value.filename == str(target) and info.value.errno == 28
    assert PARTIAL_MARKER not in str(info.value)

    with pytest.raises(OSError) as info:  # a write error names no file: it gets the target
        write_all_or_nothing([(target, lambda tmp: (_ for _ in ()).throw(OSError(28, "No space left on device")))])
    assert info.value.filename == str(target)

    missing = tmp_path / "missing.png"  # an error about another file keeps that file's name
    with pytest.raises(FileNotFoundError) as info:
        with atomic_path(target):
            missing.read_bytes()
    assert info.value.filename == str(missing)
    assert _names(tmp_path) == []


def test_group_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "sub" / "b.png"
    a.write_text("old a")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(OSError, match="No space left") as info:
        write_all_or_nothing([(a, lambda t: t.write_text("new a")), (b, fail)])
    assert info.value.filename == str(b)
    assert a.read_text() == "old a" and not b.exists()
    assert _names(tmp_path) == ["a.json", "sub"] and _names(tmp_path / "sub") == []

    write_all_or_nothing([(a, lambda t: t.write_text("new a")), (b, lambda t: t.write_text("new b"))])
    assert a.read_text() == "new a" and b.read_text() == "new b"


def test_group_rename_failure_rolls_back(tmp_path, monkeypatch):
    """If the second rename fails, the first file renamed by this call is removed again."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == b:
            raise OSError(13, "Permission denied", str(src), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError) as info:
        write_all_or_nothing([(a, lambda t: t.write_text("a")), (b, lambda t: t.write_text("b"))])
    assert info.value.filename == str(b)
    assert _names(tmp_path) == []


def test_group_context_manager(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    b.write_text("old b")
    with pytest.raises(ValueError):
        with atomic_paths([a, b]) as (ta, tb):
            assert ta.suffix == tb.suffix == ".txt"
            ta.write_text("a")
            raise ValueError
    assert _names(tmp_path) == ["b.txt"] and b.read_text() == "old b"
    with atomic_paths([a, b]) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b" and _names(tmp_path) == ["a.txt", "b.txt"]


def test_remove_partial_files(tmp_path):
    (tmp_path / "sub").mkdir()
    keep = [tmp_path / "a.json", tmp_path / ".hidden", tmp_path / "sub" / "b.png"]
    stale = [tmp_path / ".a.json.0123abcd.partial.json", tmp_path / "sub" / ".b.png.1.ab.partial"]
    for p in keep + stale:
        p.write_text("x")
    assert remove_partial_files(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert remove_partial_files(tmp_path / "nope") == 0
