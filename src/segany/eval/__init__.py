"""The paper's zero-shot experiments (section 7, appendix D): metrics, data loaders and reports.

Each experiment is one module (``points``, ``edges``, ``proposals``, ``instances``,
``fairness``) built on shared pieces: click simulation (``clicks``), eval-split data loaders
(``datasets``), the BSDS boundary benchmark (``bsds``), classic edge baselines
(``baselines``) and report writing (``report``). ``segany eval ...`` runs them.
"""
