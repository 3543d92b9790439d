"""Resumable full runs: finished images are stored, reloaded, and never mixed across models or settings."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch

from segany.cli import main
from segany.eval import resume
from segany.eval.datasets import default_data_root
from segany.modeling.fingerprint import sampled_weights_digest

DATA = default_data_root()
needs_data = pytest.mark.skipif(not (DATA / "grabcut").is_dir(), reason="shared eval data not available")


def test_store_round_trip_and_seconds(tmp_path: Path):
    st = resume.ResumeStore(tmp_path, "x", {"model": "a", "n": 1})
    assert st.get("img/1") is None
    st.put("img/1", {"seconds": 2.5, "values": [0.1, 0.25], "meta": {"k": "v"}})
    again = resume.ResumeStore(tmp_path, "x", {"model": "a", "n": 1})
    assert again.get("img/1") == {"seconds": 2.5, "values": [0.1, 0.25], "meta": {"k": "v"}}
    assert again.loaded == 1 and again.seconds == 2.5
    assert again.get("img/2") is None  # never stored


def test_store_clears_records_of_another_signature(tmp_path: Path):
    resume.ResumeStore(tmp_path, "x", {"model": "a"}).put("k", {"seconds": 1.0})
    other = resume.ResumeStore(tmp_path, "x", {"model": "b"})
    assert other.get("k") is None
    # and the old model's records are gone for good, not waiting to resurface
    assert resume.ResumeStore(tmp_path, "x", {"model": "a"}).get("k") is None


def test_store_disabled_recomputes_and_forgets(tmp_path: Path):
    resume.ResumeStore(tmp_path, "x", {"m": 1}).put("k", {"seconds": 1.0})
    off = resume.ResumeStore(tmp_path, "x", {"m": 1}, enabled=False)
    assert off.get("k") is None
    off.put("k2", {"seconds": 3.0})  # counted, not written
    assert off.seconds == 3.0 and not (tmp_path / ".resume" / "x").exists()


def test_store_ignores_damaged_records(tmp_path: Path):
    st = resume.ResumeStore(tmp_path, "x", {"m": 1})
    st.put("k", {"seconds": 1.0})
    (f,) = [p for p in (tmp_path / ".resume" / "x").glob("*.json") if p.name != resume.SIGNATURE_FILE]
    f.write_text('{"key": "k", "val')  # a write cut short
    assert resume.ResumeStore(tmp_path, "x", {"m": 1}).get("k") is None
    f.write_text(json.dumps({"key": "other", "value": {}}))  # a digest collision is not trusted
    assert resume.ResumeStore(tmp_path, "x", {"m": 1}).get("k") is None


def test_partial_store_reads_only(tmp_path: Path):
    resume.ResumeStore(tmp_path, "x", {"m": 1}).put("k", {"seconds": 2.0})
    part = resume.ResumeStore(tmp_path, "x", {"m": 1}, partial=True)
    assert part.get("k") == {"seconds": 2.0} and part.loaded == 1
    assert not part.skip(part.get("k")) and part.skip(part.get("missing")) and part.skipped == 1
    with pytest.raises(RuntimeError, match="read-only"):
        part.put("k2", {"seconds": 1.0})
    part.check_partial("images")  # something was finished: no error
    # another signature reads nothing and deletes nothing
    other = resume.ResumeStore(tmp_path, "x", {"m": 2}, partial=True)
    assert other.get("k") is None
    with pytest.raises(ValueError, match="no finished images"):
        other.check_partial("images")
    assert resume.ResumeStore(tmp_path, "x", {"m": 1}).get("k") == {"seconds": 2.0}
    with pytest.raises(ValueError, match="--no-resume"):
        resume.ResumeStore(tmp_path, "x", {"m": 1}, enabled=False, partial=True)


def test_model_fingerprint_tracks_weights():
    a = torch.nn.Linear(300, 300)
    b = torch.nn.Linear(300, 300)
    fa = sampled_weights_digest(a)
    assert fa == sampled_weights_digest(a) and fa != sampled_weights_digest(b)
    with torch.no_grad():
        a.weight[-1, -1] += 1.0  # the last element is always among the sampled values
    assert sampled_weights_digest(a) != fa
    assert sampled_weights_digest(None) == "none"


def _load(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@needs_data
def test_points_run_resumes_with_identical_numbers(tmp_path: Path):
    out = tmp_path / "points"
    args = ["eval", "points", "--datasets", "grabcut", "--limit", "3", "--max-clicks", "9", "--out", str(out),
            "--no-progress", "--threads", "1"]
    cv2_threads = cv2.getNumThreads()
    # OpenCV's thread count is process-wide state other commands set (eval prompts sets it
    # to --threads): the recomputation below runs under another one and must not notice
    cv2.setNumThreads(1)
    try:
        _resume_and_compare(args, out)
    finally:
        cv2.setNumThreads(cv2_threads)


def _resume_and_compare(args: list[str], out: Path) -> None:
    assert main(args) == 0
    first = _load(out)
    assert first["images_resumed"] == 0 and first["compute_seconds"] > 0
    # GrabCut has one object per image: images 0 and 1 give the two example figures and are
    # always simulated again. Drop image 2's record: the rerun must recompute it, identically.
    records = sorted((out / ".resume" / "points").glob("*.json"))
    records = [p for p in records if p.name != resume.SIGNATURE_FILE]
    assert len(records) == 3
    victim = next(p for p in records if "/2/" in json.loads(p.read_text())["key"])
    victim.unlink()
    # --partial reports the two finished images and computes nothing
    assert main([*args, "--partial"]) == 0
    part = _load(out)
    assert part["partial"] == {"images_finished": 2, "images_total": 3}
    assert part["datasets"]["grabcut"]["images"] == 2 and part["datasets"]["grabcut"]["objects"] == 2
    assert part["per_object"]["grabcut"] == first["per_object"]["grabcut"][:2]
    assert "Partial report: 2 of 3 images" in (out / "report.md").read_text()
    assert not victim.exists()
    cv2.setNumThreads(2)
    assert main(args) == 0
    second = _load(out)
    assert second["partial"] is None
    assert second["images_resumed"] == 0
    assert second["datasets"] == first["datasets"] and second["per_object"] == first["per_object"]
    assert main(args) == 0  # once more: image 2 is loaded now
    third = _load(out)
    assert third["images_resumed"] == 1 and third["datasets"] == first["datasets"]
    assert main([*args, "--no-resume"]) == 0
    assert _load(out)["images_resumed"] == 0 and not (out / ".resume" / "points").exists()


@needs_data
def test_edges_baselines_resume_per_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "edges"
    base = ["eval", "edges", "--limit", "1", "--nthresh", "5", "--out", str(out), "--no-progress", "--no-model"]
    assert main([*base, "--baselines", "canny"]) == 0
    canny = _load(out)["methods"]["canny"]
    # sobel has finished nothing yet: a partial report of both methods has no image to show
    assert main([*base, "--baselines", "canny", "sobel", "--partial"]) == 2
    assert "no image finished by every method" in capsys.readouterr().err
    assert main([*base, "--baselines", "canny", "--partial"]) == 0
    assert _load(out)["methods"]["canny"] == canny and _load(out)["partial"] == {"images_finished": 1, "images_total": 1}
    # A later run with both baselines loads canny's image and computes sobel's.
    assert main([*base, "--baselines", "canny", "sobel"]) == 0
    rep = _load(out)
    assert rep["methods"]["canny"] == canny and set(rep["methods"]) == {"canny", "sobel"}
    assert rep["method_seconds"]["canny"] > 0 and rep["compute_seconds"] >= rep["method_seconds"]["canny"]
    assert "earlier, interrupted run" in (out / "report.md").read_text()
    # the example figure was redrawn with both methods, and is not redrawn again
    examples = list(out.glob("example_*.png"))
    assert len(examples) == 1 and (out / ".resume" / "edges-examples-canny+sobel").is_dir()
    stamp = examples[0].stat().st_mtime_ns
    assert main([*base, "--baselines", "canny", "sobel"]) == 0
    assert examples[0].stat().st_mtime_ns == stamp


def test_resume_line_wording():
    from segany.eval.report import resume_line

    assert "Partial report: 2 of 3 images" in resume_line(10.0, 2, 1)
    complete = resume_line(10.0, 3, 0)  # --partial found everything finished: no "will change" warning
    assert "All 3 images finished" in complete and "will change" not in complete
    assert "3 images loaded from an earlier" in resume_line(10.0, 3)
    assert resume_line(4.0, 0) == "Compute time of every image, summed over the runs that made them: 4 s.\n\n"
