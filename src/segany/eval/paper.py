"""The SAM paper's own numbers, quoted next to ours in the reports and in ``segany eval summary``.

They live in this one table so that an experiment's report and the suite summary can never
quote two different values for the same paper row. They are for reference only: the paper
evaluates SAM ViT-H on the full benchmarks (LVIS v1 for proposals, ViTDet-H boxes for
instances), which this project's data and CPU cannot reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """One of the paper's tables: the rows we quote, with the units the paper prints them in."""

    table: str
    data: str
    unit: str  # "fraction" (0..1) or "%"
    rows: dict[str, dict[str, float | None]]


PAPER: dict[str, Reference] = {
    "edges": Reference("table 3", "BSDS500 test", "fraction", {
        "SAM ViT-H (paper)": {"ODS": 0.768, "OIS": 0.786, "AP": 0.794, "R50": 0.928},
        "Canny (paper)": {"ODS": 0.600, "OIS": 0.640, "AP": 0.580, "R50": None},
        "Sobel (paper)": {"ODS": 0.539, "OIS": None, "AP": None, "R50": None},
    }),
    "proposals": Reference("table 4", "LVIS v1", "%", {"SAM ViT-H": {"AR@1000": 59.3}}),
    "instances": Reference("table 5", "COCO, ViTDet-H boxes", "%", {"SAM ViT-H": {"AP": 46.5}}),
}

EDGES_TABLE3 = PAPER["edges"].rows  # report.json's ``paper_table3``
PROPOSALS_AR1000 = PAPER["proposals"].rows["SAM ViT-H"]["AR@1000"]  # mask AR@1000, %
INSTANCES_AP = PAPER["instances"].rows["SAM ViT-H"]["AP"]  # COCO mask AP, %
