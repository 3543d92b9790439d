"""The paper's zero-shot experiments (section 7, appendix D): metrics, data loaders and reports.

Each experiment is one module (``points``, ``prompts``, ``edges``, ``proposals``,
``instances``, ``fairness``) that says what it computes per image and how it summarises; one
runner (``runner``) runs them all: resuming from ``OUT/.resume`` (``resume``), ``--partial``
reports, progress, timing and the report files (``report``). Shared pieces: click simulation
(``clicks``), eval-split data loaders (``datasets``), the BSDS boundary benchmark (``bsds``),
classic baselines (``baselines``, ``classical``), the paper's reference numbers (``paper``)
and the one-page suite summary (``summary``). ``segany eval ...`` runs them.
"""
