"""One page for a whole evaluation suite: the headline tables of every ``report.json`` in a folder.

Each ``segany eval`` command writes its own report into its own ``--out`` folder. A full run of
the suite (``scripts/eval_full.sh``) therefore leaves six reports, some finished and some still
partial, and whoever reads the results wants them side by side, like the paper's tables, with
the state of every run stated next to its numbers. This module reads the reports back (it
computes nothing, so it is safe while runs are still going) and writes ``summary.md`` and
``summary.json`` beside them.

Reports of different models in one summary are an error: a table whose rows come from two
models would be silently wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report
from .paper import EDGES_TABLE3, INSTANCES_AP, PROPOSALS_AR1000

EXPERIMENTS = ("points", "prompts", "edges", "proposals", "instances", "fairness")
TITLES = {
    "points": "Point-to-mask mIoU (paper 7.1 / D.1, figure 9)",
    "prompts": "Box / 1-point / 5-click mIoU (classical baselines where the run scored them)",
    "edges": "Edge detection on BSDS500 (paper 7.2 / D.2, table 3)",
    "proposals": "Object proposals (paper 7.3 / D.3, table 4)",
    "instances": "Box-prompted instance segmentation (paper 7.4 / D.4, table 5)",
    "fairness": "mIoU per group with 95% bootstrap CIs (paper section 6, table 2)",
}


def find_reports(runs_dir: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``experiment -> (folder, report.json)`` for every report in ``runs_dir`` or its sub-folders.

    Raises:
        FileNotFoundError: no report at all.
        ValueError: two folders hold the same experiment (which one to show would be a guess),
            or a report is not a segany eval report.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder")
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted([runs_dir / "report.json", *runs_dir.glob("*/report.json")]):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable JSON report ({e})") from e
        exp = data.get("experiment") if isinstance(data, dict) else None
        if exp not in EXPERIMENTS:
            raise ValueError(f"{path}: not a segany eval report (experiment {exp!r})")
        if exp in found:
            raise ValueError(f"two {exp} reports: {found[exp][0]} and {path.parent}; summarise one run per experiment")
        found[exp] = (path.parent, data)
    if not found:
        raise FileNotFoundError(f"{runs_dir}: no report.json in it or in its sub-folders")
    return found


def _model_key(info: dict[str, Any]) -> tuple[Any, ...]:
    return (info.get("checkpoint"), info.get("model_type"), info.get("parameters"))


def check_one_model(reports: dict[str, tuple[Path, dict[str, Any]]]) -> dict[str, Any] | None:
    """The model every report evaluated; ``None`` when only model-free reports exist (edge baselines)."""
    models = {exp: data["model"] for exp, (_, data) in reports.items() if data.get("model")}
    keys = {_model_key(m) for m in models.values()}
    if len(keys) > 1:
        listing = "; ".join(f"{exp}: {m.get('checkpoint')} ({m.get('parameters')} parameters)" for exp, m in models.items())
        raise ValueError(f"the reports evaluate different models ({listing}); summarise one model per folder")
    return next(iter(models.values()), None)


def run_state(data: dict[str, Any]) -> str:
    """'complete', or 'partial: k of n images' for a ``--partial`` report that is not finished."""
    part = data.get("partial")
    if part and part.get("images_finished") != part.get("images_total"):
        return f"partial: {part['images_finished']} of {part['images_total']} images"
    return "complete"


def _pct(x: Any) -> float | None:
    return None if x is None else 100.0 * float(x)


def _points(data: dict[str, Any]) -> str:
    counts = [str(n) for n in data["settings"]["click_counts"]]
    header = ["data set", "objects"] + [f"mIoU@{n}" for n in counts] + ["oracle@1", "NoC@85", "NoC@90"]
    rows = []
    for name, r in [*data["datasets"].items(), ("mean", data["mean"])]:
        rows.append([name, r.get("objects", "")] + [_pct(r["top"]["mIoU"].get(n)) for n in counts]
                    + [_pct(r["oracle"]["mIoU"].get("1")), r["top"].get("NoC@85"), r["top"].get("NoC@90")])
    return report.markdown_table(header, rows, digits=1) + "\nmIoU in %; NoC = clicks to reach 85/90% IoU (at most 20).\n"


def _prompts(data: dict[str, Any]) -> str:
    cols = list(data["columns"])
    header = ["data set", "objects"] + [data["columns"][c] for c in cols]
    rows = [[name, r["objects"]] + [_pct(r["mIoU"].get(c)) for c in cols] for name, r in data["datasets"].items()]
    rows.append(["mean", ""] + [_pct(data["mean"]["mIoU"].get(c)) for c in cols])
    return report.markdown_table(header, rows, digits=1) + "\nmIoU in %.\n"


def _edges(data: dict[str, Any]) -> str:
    rows = [[name, m["ODS"], m["OIS"], m["AP"], m["R50"]] for name, m in data["methods"].items()]
    rows += [[name, m["ODS"], m["OIS"], m["AP"], m["R50"]] for name, m in EDGES_TABLE3.items()]
    s = data["settings"]
    return (report.markdown_table(["method", "ODS", "OIS", "AP", "R50"], rows)
            + f"\n{s['images']} images of the BSDS500 `{s['split']}` split; (paper) rows: SAM ViT-H and the paper's "
            "baselines, for reference.\n")


def _proposals(data: dict[str, Any]) -> str:
    ar = data["AR@1000"]
    rows = [["this model", _pct(ar.get("100")), _pct(ar.get("300")), _pct(ar["all"]), _pct(ar["small"]),
             _pct(ar["medium"]), _pct(ar["large"])],
            ["SAM ViT-H (paper, LVIS v1)", None, None, PROPOSALS_AR1000, None, None, None]]
    return (report.markdown_table(["", "mask AR@100", "AR@300", "AR@1000", "small", "medium", "large"], rows, digits=1)
            + f"\n{data['settings']['images']} images of `{data['settings']['dataset']}`; AR in %, by pycocotools.\n")


def _instances(data: dict[str, Any]) -> str:
    keys = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
    rows = [["this model", *(_pct(data["AP"][k]) for k in keys)],
            ["SAM ViT-H, ViTDet-H boxes (paper, COCO)", INSTANCES_AP, None, None, None, None, None]]
    s = data["settings"]
    return (report.markdown_table(["", "mask AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"], rows, digits=1)
            + f"\n{s['images']} images of `{s['dataset']}`, boxes: {s['boxes']}; AP in %, by pycocotools.\n")


def _fairness(data: dict[str, Any]) -> str:
    def cell(m: dict[str, Any]) -> str:
        lo, hi = m.get("ci95") or (None, None)
        if m.get("mean") is None:  # NaN in the report (written as null): no score for this group
            return "-"
        ci = "" if lo is None or hi is None else f" [{100 * lo:.1f}, {100 * hi:.1f}]"
        return f"{100 * m['mean']:.1f}{ci}"

    parts = []
    for column, groups in data["groups"].items():
        rows = [[g, r["objects"], cell(r["mIoU@1"]), cell(r["mIoU@3"])] for g, r in groups.items()]
        parts.append(f"By `{column}`:\n\n" + report.markdown_table([column, "objects", "mIoU@1 [95% CI]", "mIoU@3 [95% CI]"], rows))
    return "\n".join(parts) + f"\n{data['objects']} objects, first click {data['settings']['first_click']}; mIoU in %.\n"


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "points": _points, "prompts": _prompts, "edges": _edges, "proposals": _proposals,
    "instances": _instances, "fairness": _fairness,
}


def _seconds(data: dict[str, Any]) -> float | None:
    """Compute time of the whole run: summed over resumed sessions where the report knows it."""
    value = data.get("compute_seconds", data.get("seconds"))
    return None if value is None else float(value)


def summarize(runs_dir: Path, out_dir: Path | None = None) -> tuple[dict[str, Any], str]:
    """The summary of every report under ``runs_dir``, as (JSON object, markdown).

    ``out_dir``: where the markdown will live (default ``runs_dir``); its links to the reports are
    relative to it, so the folder can be moved or published as a whole.
    """
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir) if out_dir is not None else runs_dir
    reports = find_reports(runs_dir)
    model = check_one_model(reports)
    ordered = [e for e in EXPERIMENTS if e in reports]
    status = {e: {"folder": str(reports[e][0]), "state": run_state(reports[e][1]),
                  "compute_seconds": _seconds(reports[e][1])} for e in ordered}
    md = "# Evaluation summary\n\n"
    if model is not None:
        md += "".join(line + "\n" for line in report.model_lines(model))
    md += f"- reports read from `{runs_dir}` (each folder's report.md has the details, plots and examples)\n\n"
    rows = [[e, f"[{Path(s['folder']).name}]({os.path.relpath(Path(s['folder']) / 'report.md', out_dir)})", s["state"],
             None if s["compute_seconds"] is None else f"{s['compute_seconds']:.0f}"] for e, s in status.items()]
    md += report.markdown_table(["experiment", "report", "state", "compute time (s)"], rows)
    md += "\nCompute time: summed over every session that computed part of the run.\n\n"
    incomplete = [e for e, s in status.items() if s["state"] != "complete"]
    if incomplete:
        md += (f"**Not final:** {', '.join(incomplete)} cover only the images finished so far; their numbers will "
               "change when the runs complete.\n\n")
    missing = [e for e in EXPERIMENTS if e not in reports]
    if missing:
        md += f"No report yet: {', '.join(missing)}.\n\n"
    for e in ordered:
        try:
            section = SECTIONS[e](reports[e][1])
        except (KeyError, TypeError, ValueError) as err:  # a report of an older or foreign writer
            raise ValueError(f"{reports[e][0] / 'report.json'}: not a complete {e} report ({type(err).__name__}: {err})") from err
        md += f"## {TITLES[e]}\n\n{section}\n"
    out = {"model": model, "experiments": status, "missing": missing}
    return out, md


def write(runs_dir: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Write ``summary.md`` and ``summary.json`` (atomically) into ``out_dir`` (default: ``runs_dir``)."""
    out_dir = Path(out_dir) if out_dir is not None else Path(runs_dir)
    summary, md = summarize(runs_dir, out_dir)
    report.write_json(out_dir / "summary.json", summary)
    report.write_text(out_dir / "summary.md", md)
    return summary
