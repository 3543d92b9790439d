"""The one loop every ``segany eval`` experiment runs: options, resume, partial reports, progress, timing, report.

Every experiment is the same run around a different computation: walk the images of one or
more data sets, load those an earlier, interrupted run into the same ``--out`` has finished
(their records are in ``OUT/.resume``, see :mod:`segany.eval.resume`), compute the rest one
image at a time and store each as it finishes, then summarise and write ``report.json`` and
``report.md``. The loop lives here once, so that resuming, ``--partial``, the progress bar,
the compute time and the report header mean the same thing in all six experiments, and an
experiment (a subclass of :class:`Experiment`) says only what it computes per image and how it
summarises.

An image's result is a *record*: a JSON-able dict, stored as it is. The runner adds the
image's ``seconds`` (unless the record brings its own), so every report can state the compute
time of the whole run, summed over the sessions that made it. Most experiments keep one record
per image; ``eval edges`` keeps one per method, in a store each (a ``--no-model`` run and a
model-only run fill one folder side by side), which is what :meth:`Experiment.parts` is for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from . import report, resume

Record = dict[str, Any]
Finished = list[tuple[Any, dict[str, Record]]]  # (item, {part: record}) of each finished image, in order


class Deferred(Protocol):
    """A record still being computed elsewhere (a worker process); stored as soon as it is done."""

    def done(self) -> bool: ...

    def result(self) -> Record: ...


class Store(Protocol):
    """What the runner needs of a store: :class:`segany.eval.resume.ResumeStore`, or nothing at all."""

    loaded: int

    def get(self, key: str) -> Record | None: ...

    def put(self, key: str, value: Record) -> None: ...

    def check_partial(self, what: str) -> None: ...


class _Unstored:
    """The store of an experiment that keeps nothing (``eval instances`` takes minutes, not hours)."""

    loaded = 0

    def get(self, key: str) -> Record | None:
        return None

    def put(self, key: str, value: Record) -> None:
        pass

    def check_partial(self, what: str) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """What every experiment is given besides its own settings (the CLI's ``--out``, ``--no-resume``,
    ``--partial``, ``--no-progress``, and the report header's model and command)."""

    out_dir: Path
    model_info: dict[str, Any] | None  # None: no model was evaluated (edge baselines only)
    command: str
    show_progress: bool = True
    resume: bool = True  # False (--no-resume): recompute every image and clear the stored ones
    partial: bool = False  # compute nothing: report the images finished so far

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.partial and not self.resume:
            raise ValueError("--partial reports the stored images, so it cannot be combined with --no-resume")


@dataclass
class RunContext:
    """The run as an experiment sees it (:meth:`Experiment.start`): its options and its stores."""

    options: RunOptions
    stores: dict[str, Store]

    @property
    def out_dir(self) -> Path:
        return self.options.out_dir

    @property
    def partial(self) -> bool:
        return self.options.partial

    def store(self, name: str, signature: dict[str, Any]) -> resume.ResumeStore:
        """Another store under this run's flags, for what is not a result (which example figures are drawn)."""
        return resume.ResumeStore(self.out_dir, name, signature, enabled=self.options.resume,
                                  partial=self.options.partial)


@dataclass
class Summary:
    """What an experiment reports: report.json entries and the body of report.md.

    ``fields`` come right after the report's ``experiment`` and ``model``, then the runner's
    ``seconds``, ``compute_seconds``, ``images_resumed`` and ``partial``, then ``details``
    (long per-object lists, kept at the end so the headline numbers come first in the file).
    """

    fields: dict[str, Any]
    markdown: str
    details: dict[str, Any] = field(default_factory=dict)


class Experiment:
    """What one experiment computes per image and how it summarises; :func:`run` does the rest.

    A subclass sets :attr:`name` (report.json's ``experiment``, and its store's folder under
    ``OUT/.resume``) and :attr:`title` (report.md's), and defines :meth:`signature`, :meth:`key`,
    :meth:`per_image`, :meth:`summarise_dataset` and :meth:`summarise`. Experiments with several
    independent records per image override :meth:`parts`, :meth:`compute` and
    :meth:`finish_dataset` instead. :meth:`start` hands over the run (``self.ctx``) before the
    first image, so every hook can reach the output folder.
    """

    name: str = ""
    title: str = ""
    resumable: bool = True  # False: nothing is stored and --partial is refused
    ctx: RunContext

    def start(self, ctx: RunContext) -> None:
        """Called once, after the stores are open and before the first image."""
        self.ctx = ctx

    # ---------------------------------------------------------------- one record per image
    def signature(self) -> dict[str, Any]:
        """Everything that changes the numbers: records stored under any other signature are discarded."""
        raise NotImplementedError(f"{type(self).__name__} must define signature() or override parts()")

    def key(self, dataset: str, index: int, item: Any) -> str:
        """The store key of ``item``, the ``index``-th image of ``dataset``."""
        raise NotImplementedError(f"{type(self).__name__} must define key()")

    def fresh(self, dataset: str, index: int, item: Any) -> bool:
        """True: compute this image even if it is stored (its example figure needs the masks).

        Never asked in a ``--partial`` run, which computes nothing.
        """
        return False

    def per_image(self, dataset: str, index: int, item: Any) -> Record:
        """The record of one image (JSON-able: it is stored as it is)."""
        raise NotImplementedError(f"{type(self).__name__} must define per_image() or override compute()")

    def summarise_dataset(self, dataset: str, finished: list[tuple[Any, Record]]) -> Any:
        """The summary of one data set from its finished images' (item, record); None leaves it out."""
        return finished

    def summarise(self, datasets: dict[str, Any]) -> Summary:
        """The report, from :meth:`summarise_dataset`'s results per data set."""
        raise NotImplementedError(f"{type(self).__name__} must define summarise()")

    # ---------------------------------------------------------------- several records per image
    def parts(self) -> dict[str, dict[str, Any]]:
        """One store per record of an image: ``{store name: signature}``."""
        return {self.name: self.signature()}

    def revisit(self, dataset: str, index: int, item: Any) -> bool:
        """True: call :meth:`compute` even though every record of the image is stored (with ``todo`` empty)."""
        return False

    def compute(
        self, dataset: str, index: int, item: Any, todo: Sequence[str], stored: dict[str, Record]
    ) -> dict[str, Record | Deferred]:
        """The records of the parts in ``todo`` (``stored`` holds the others)."""
        return {self.name: self.per_image(dataset, index, item)}

    def finish_dataset(self, dataset: str, finished: Finished) -> Any:
        """:meth:`summarise_dataset` over the images that every part has finished."""
        return self.summarise_dataset(dataset, [(item, recs[self.name]) for item, recs in finished])

    def nothing_finished(self) -> None:
        """Raise the error of a ``--partial`` run that found no finished image."""
        for store in self.ctx.stores.values():
            store.check_partial("images")
        raise ValueError(f"--partial: no finished images in {self.ctx.out_dir / '.resume'} for this model and "
                         "these settings")


def run(experiment: Experiment, datasets: dict[str, Sequence[Any]], options: RunOptions) -> dict[str, Any]:
    """Run ``experiment`` over every image of ``datasets`` and write ``report.json`` and ``report.md``.

    Returns the report's JSON object. With ``options.partial`` nothing is computed: the report
    covers the images every part has finished, and says how many of how many.
    """
    if options.partial and not experiment.resumable:
        raise ValueError(f"eval {experiment.name} is not resumable: run it without --partial")
    stores: dict[str, Store]
    if experiment.resumable:
        stores = {
            part: resume.ResumeStore(options.out_dir, part, sig, enabled=options.resume, partial=options.partial)
            for part, sig in experiment.parts().items()
        }
    else:
        stores = {experiment.name: _Unstored()}
    ctx = RunContext(options, stores)
    experiment.start(ctx)
    t0 = time.time()
    summaries: dict[str, Any] = {}
    done: Finished = []
    skipped = 0
    total = sum(len(items) for items in datasets.values())
    with tqdm(total=total, desc=f"eval {experiment.name}", unit="img", disable=not options.show_progress) as bar:
        for name, items in datasets.items():
            bar.set_postfix_str(name)
            finished, missing = _run_dataset(experiment, ctx, name, items, bar)
            done += finished
            skipped += missing
            summary = experiment.finish_dataset(name, finished)
            if summary is not None:
                summaries[name] = summary
    if options.partial and not done:
        experiment.nothing_finished()
    summary = experiment.summarise(summaries)
    seconds = time.time() - t0
    compute = float(sum(sum(float(recs[p].get("seconds", 0.0) or 0.0) for _, recs in done) for p in stores))
    resumed = max(s.loaded for s in stores.values())
    return _write_report(experiment, options, summary, seconds, compute, resumed, len(done), skipped)


def _run_dataset(
    experiment: Experiment, ctx: RunContext, name: str, items: Sequence[Any], bar: Any
) -> tuple[Finished, int]:
    """Every image of one data set: loaded, computed or (partial) skipped; returns (finished, skipped)."""
    stores, partial = ctx.stores, ctx.partial
    finished: Finished = []
    skipped = 0
    pending: list[tuple[dict[str, Any], str, str, Deferred]] = []
    for index, item in enumerate(items):
        key = experiment.key(name, index, item)
        fresh = not partial and experiment.fresh(name, index, item)
        stored: dict[str, Any] = {}
        if not fresh:
            stored = {part: rec for part, store in stores.items() if (rec := store.get(key)) is not None}
        todo = [part for part in stores if part not in stored]
        if partial:
            if todo:  # not finished by every part yet: left out of the report
                skipped += 1
                bar.update(1)
                continue
        elif todo or experiment.revisit(name, index, item):
            ts = time.time()
            new = experiment.compute(name, index, item, todo, dict(stored))
            elapsed = time.time() - ts
            for part, rec in new.items():
                if isinstance(rec, dict):
                    rec = {"seconds": elapsed, **rec}
                    stores[part].put(key, rec)
                    stored[part] = rec
                else:  # finished by a worker later; stored then (a kill loses only what is unfinished)
                    pending.append((stored, part, key, rec))
        finished.append((item, stored))
        pending = _store_ready(pending, stores)
        bar.update(1)
    _store_ready(pending, stores, wait=True)
    return finished, skipped


def _store_ready(
    pending: list[tuple[dict[str, Any], str, str, Deferred]], stores: dict[str, Store], wait: bool = False
) -> list[tuple[dict[str, Any], str, str, Deferred]]:
    """Store the deferred records that are done (all of them with ``wait``); returns the rest."""
    still = []
    for recs, part, key, job in pending:
        if wait or job.done():
            rec = job.result()
            stores[part].put(key, rec)
            recs[part] = rec
        else:
            still.append((recs, part, key, job))
    return still


def _write_report(
    experiment: Experiment, options: RunOptions, summary: Summary, seconds: float, compute: float, resumed: int,
    finished: int, skipped: int,
) -> dict[str, Any]:
    """report.json and report.md: the common header and run fields around the experiment's own."""
    result: dict[str, Any] = {"experiment": experiment.name, "model": options.model_info, **summary.fields,
                              "seconds": seconds}
    md = report.header_markdown(experiment.title, options.model_info, options.command, seconds)
    if experiment.resumable:
        result.update(compute_seconds=compute, images_resumed=resumed,
                      partial=report.partial_field(finished, skipped) if options.partial else None)
        md += (report.resume_line(compute, finished, skipped) if options.partial
               else report.resume_line(compute, resumed))
    result.update(summary.details)
    md += summary.markdown
    report.write_json(options.out_dir / "report.json", result)
    report.write_text(options.out_dir / "report.md", md)
    return result
