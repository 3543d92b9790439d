"""``segany auto --ray``: the automatic stage sharded over the actors of a Ray cluster.

The run is the single-process one (:mod:`segany.automatic.folder`) with the images spread out:
the driver collects the images, checks and prepares ``--out`` and decides which images are
finished with the very same functions (``prepare_outputs``, ``plan_resume``); each worker
computes and writes an image with the very same ``segment_image``. So the outputs, their
layout, their records and what a rerun skips are those of ``segany auto`` without Ray, byte
for byte (tested).

Why plain actors and not Ray Data: the work is "for each image path: read, segment, write
files", a side-effecting map whose costly part is a model that must stay loaded. An actor is
exactly one loaded model (weights read once per worker, on its own CPU or GPU); the driver
streams it image *paths* and gets back one small tuple per image (name, number of masks), so
no image, mask or tensor ever crosses the object store and the driver's memory stays flat
whatever the number of images. Each actor has at most ``max_in_flight`` (2) images queued:
one running, one waiting, so it never idles on a round trip to the driver, faster workers
are handed more images (the least-loaded healthy worker gets the next one), and a worker that
dies loses at most two images. Ray Data would add blocks, an executor and a dataset
dependency (pyarrow) for no gain here: it batches rows for vectorised UDFs, while SAM
segments one image at a time; its outputs flow back through the object store unless a sink
writes them; and its retries are per block, where resuming and reporting here are per image.

Worker death (a crash, an out-of-memory kill, a lost node): Ray restarts the actor
(``max_restarts``: it reloads the model), and the driver resubmits every image that was in
flight on it, to whichever worker is healthy (a restarted one is probed before it gets work).
Each image is reported once: only the task that returns counts, and a duplicate computation
(the worker died after renaming its outputs into place but before answering) rewrites the
same bytes atomically. An image whose worker died ``max_attempts`` times is reported failed
(a poison image must not crash-loop the cluster); if every worker is gone the run stops, and
a rerun resumes it.

Requirements: every worker must see the inputs and ``--out`` at the same paths as the driver
(one machine, or a shared file system on a cluster) -- checked at start-up with a probe file
the driver writes in ``--out``, so a node with its own copy of the folder is refused instead
of scattering outputs -- and segany must be importable on every node. Ray itself is an
optional dependency, imported only here and only when a Ray run starts.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic_files import write_text_atomic
from ..image_io import ImageError
from ..modeling import Sam
from .folder import (
    ImageJob,
    ResumePlan,
    RunSummary,
    collect_images,
    plan_resume,
    prepare_outputs,
    run_provenance,
    segment_image,
)
from .generator import SamAutomaticMaskGenerator

MAX_IN_FLIGHT = 2  # images queued per worker: one running, one waiting
MAX_ATTEMPTS = 3  # workers an image may take down before it is reported failed
MAX_RESTARTS = 3  # times Ray restarts one worker after its process died
PROBE_INTERVAL = 0.5  # seconds between asking a restarting worker whether it is back
RESTART_TIMEOUT = 600.0  # seconds a restarting worker may take (it reloads the model) before it is given up

ModelFactory = Callable[[], Sam]


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to get it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray, which is not installed here: pip install 'segany[ray]'") from None
    return ray


def _default_model() -> Sam:
    from ..default_model import load_default_model

    return load_default_model("cpu", warn=False)


@dataclass
class WorkerInfo:
    """What a worker reports when it is up (and again after a restart)."""

    record: dict[str, Any] | None
    error: str | None
    node: str
    pid: int


class SegmentWorker:
    """One Ray actor: one loaded model and generator, images in by path, outputs written by it.

    Errors while starting (a missing checkpoint, no GPU, a bad setting, ``--out`` not visible)
    are kept and reported by :meth:`ready` rather than raised: Ray would otherwise report a
    failed constructor as a dead actor with a long traceback. ``crash_after`` is fault
    injection for tests: the process exits abruptly (as an out-of-memory kill would) after
    writing that many images, unless Ray has already restarted it once.
    """

    def __init__(
        self,
        model_factory: ModelFactory | None,
        generator_kwargs: dict[str, Any],
        fmt: str,
        save_overlay: bool,
        out_dir: str,
        model_name: str | None,
        threads: int,
        probe: tuple[str, str],
        crash_after: int | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.fmt = fmt
        self.save_overlay = save_overlay
        self.crash_after = crash_after
        self.written = 0
        self.record: dict[str, Any] | None = None
        self.error: str | None = None
        try:
            probe_path, token = probe
            try:
                seen = Path(probe_path).read_text()
            except OSError:
                seen = None
            if seen != token:
                raise RuntimeError(
                    f"worker on {socket.gethostname()} does not see --out {out_dir} as the driver does: "
                    "--ray needs the inputs and --out on a file system every node shares, at the same path"
                )
            import torch

            torch.set_num_threads(threads)
            model = (model_factory or _default_model)()
            self.generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **generator_kwargs)
            self.record = run_provenance(self.generator, fmt, model_name)
        except Exception as exc:  # reported by ready(); the driver stops the run with it
            self.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)

    def ready(self) -> WorkerInfo:
        return WorkerInfo(self.record, self.error, socket.gethostname(), os.getpid())

    def segment(self, path: str, name: str, drop_stale_overlay: bool) -> tuple[str, int | None, str | None]:
        """``(name, masks, None)`` once the image's outputs are in place, ``(name, None, why)``
        for an unreadable image."""
        if self.record is None:
            raise RuntimeError(self.error or "worker did not start")
        job = ImageJob(Path(path), name)
        try:
            n = segment_image(
                self.generator, job, self.out, self.fmt, self.save_overlay, self.record, drop_stale_overlay
            )
        except ImageError as exc:
            return name, None, str(exc)
        self.written += 1
        if self.crash_after is not None and self.written >= self.crash_after:
            import ray

            if not ray.get_runtime_context().was_current_actor_reconstructed:
                os._exit(1)
        return name, n, None


def _worker_count(ray: Any, workers: int | None, cpus: float, gpus: float, images: int) -> int:
    """``workers``, or as many as the cluster's CPUs (GPUs when ``gpus`` > 0) hold, at most one
    per image. Refuses a count the cluster cannot place: Ray would wait for it forever."""
    have = ray.cluster_resources()
    kind, need, total = ("GPU", gpus, have.get("GPU", 0.0)) if gpus > 0 else ("CPU", cpus, have.get("CPU", 0.0))
    fit = int(math.floor(total / need + 1e-9))
    if workers is None:
        if fit < 1:
            raise ValueError(f"the Ray cluster has {total:g} {kind}(s); a worker needs {need:g}")
        return max(1, min(fit, images))
    if workers > fit:
        raise ValueError(
            f"--ray-workers {workers} needs {workers * need:g} {kind}(s) ({need:g} each); the Ray cluster has {total:g}"
        )
    return workers


def _cause(exc: BaseException) -> BaseException:
    """The exception a worker raised, without Ray's wrapper (so the CLI prints one line)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def segment_folder_ray(
    inputs: Iterable[str],
    out_dir: str | Path,
    *,
    generator_kwargs: dict[str, Any] | None = None,
    model_factory: ModelFactory | None = None,
    fmt: str = "sa1b",
    save_overlay: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    model_name: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    threads: int | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_attempts: int = MAX_ATTEMPTS,
    crash_after: int | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> RunSummary:
    """:func:`segany.automatic.folder.segment_folder` on Ray workers (module docstring).

    ``model_factory`` builds the model inside each worker (a picklable callable, e.g.
    ``functools.partial`` of a loader with a checkpoint path; default: the embedded model),
    so weights are read where they are used and never pickled. ``generator_kwargs`` are the
    :class:`SamAutomaticMaskGenerator` settings. ``address``: the cluster to connect to when
    Ray is not initialised yet (``None``: ``$RAY_ADDRESS``, a cluster running on this
    machine, or a new local one); a connection made here is closed at the end. ``workers``:
    default, as many as the cluster holds. Each worker reserves ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs and runs torch with ``threads`` threads (default: its CPUs).
    The first worker also tells the run's record (model hash and settings), so a finished or
    refused run starts only one; it starts on the images while the others load, and a worker
    that reports another record (another checkpoint on its node) gets no image.
    """
    ray = import_ray()
    for what, value, low in (("max_in_flight", max_in_flight, 1), ("max_attempts", max_attempts, 1)):
        if value < low:
            raise ValueError(f"{what} must be at least {low}, got {value}")
    jobs, missing = collect_images(inputs)
    out = prepare_outputs(jobs, out_dir, fmt, save_overlay)
    summary = RunSummary(failed=list(missing))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, **(ray_init_kwargs or {}))
    # a partial file's name: one a killed run left behind is cleared by the next run
    probe = out.resolve() / f".segany_ray_probe.{secrets.token_hex(4)}.partial"
    token = secrets.token_hex(16)
    actors: list[Any] = []
    try:
        write_text_atomic(probe, token)
        n_workers = _worker_count(ray, workers, cpus_per_worker, gpus_per_worker, max(1, len(jobs)))
        worker_cls = ray.remote(SegmentWorker).options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # resubmitted by the driver, which counts the attempts
        )
        n_threads = threads if threads is not None else max(1, int(cpus_per_worker))
        worker_args = (
            model_factory,
            dict(generator_kwargs or {}),
            fmt,
            save_overlay,
            str(out.resolve()),  # workers may start in another folder, or on another machine
            model_name,
            n_threads,
            (str(probe), token),
            crash_after,
        )

        actors.append(worker_cls.remote(*worker_args))
        first = ray.get(actors[0].ready.remote())
        if first.error is not None:
            raise RuntimeError(f"Ray worker on {first.node}: {first.error}")
        record = first.record
        assert record is not None
        plan = plan_resume(jobs, out, fmt, save_overlay, record, overwrite)
        summary.skipped = plan.skipped
        if plan.todo:
            # the first worker starts on the images while the others load their model
            actors += [worker_cls.remote(*worker_args) for _ in range(min(n_workers, len(plan.todo)) - 1)]
            _run(ray, actors, plan, out, record, summary, progress, max_in_flight, max_attempts)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        probe.unlink(missing_ok=True)
        if started_ray:
            ray.shutdown()
    order = {job.name: i for i, job in enumerate(jobs)}
    summary.done.sort(key=order.__getitem__)
    return summary


def _run(
    ray: Any,
    actors: list[Any],
    plan: ResumePlan,
    out: Path,
    record: dict[str, Any],
    summary: RunSummary,
    progress: bool,
    max_in_flight: int,
    max_attempts: int,
) -> None:
    """Stream the plan's images to the workers and collect one answer per image.

    ``actors[0]`` is up; the others are still starting and get work once their ``ready``
    answers with this run's record (a worker that reports an error or another record -- no
    GPU, no shared ``--out``, another checkpoint on its node -- is left out with a warning).
    A worker whose task failed is probed the same way before it gets work again."""
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    pending: deque[tuple[ImageJob, int]] = deque((job, 0) for job in plan.todo)
    in_flight: dict[Any, tuple[int, ImageJob, int]] = {}  # task -> (worker, image, attempts before)
    # ready() of a worker still starting, or restarted after it died -> worker
    probes: dict[Any, int] = {actors[i].ready.remote(): i for i in range(1, len(actors))}
    restarting: dict[int, tuple[float, float]] = {}  # worker -> (next probe at, give up at)
    load = [0] * len(actors)
    healthy = {0}
    last_death = ""
    start = time.perf_counter()
    bar = tqdm(total=len(plan.todo), desc="segany auto (ray)", unit="img", disable=not progress)
    bar.set_postfix_str(f"{len(healthy)} workers")
    try:
        while pending or in_flight:  # a worker still restarting when all is done is not waited for
            now = time.monotonic()
            for slot, (due, give_up) in list(restarting.items()):
                if due <= now:
                    probes[actors[slot].ready.remote()] = slot
                    restarting[slot] = (math.inf, give_up)  # until this probe answers
            while pending and healthy:
                slot = min(healthy, key=lambda i: load[i])
                if load[slot] >= max_in_flight:
                    break
                job, attempts = pending.popleft()
                path = str(job.path.resolve())  # as for --out: absolute for the workers
                task = actors[slot].segment.remote(path, job.name, plan.drops_overlay(job, out))
                in_flight[task] = (slot, job, attempts)
                load[slot] += 1
            if not in_flight and not probes and not restarting:
                raise RuntimeError(
                    f"every Ray worker died; {len(pending)} image(s) not done (finished outputs are kept: "
                    f"rerun to resume). Last: {last_death}"
                )
            waiting = [*in_flight, *probes]
            if not waiting:  # only workers waiting for their next probe
                time.sleep(PROBE_INTERVAL)
                continue
            ready, _ = ray.wait(waiting, num_returns=1, timeout=PROBE_INTERVAL if restarting else None)
            if not ready:
                continue
            ref = ready[0]
            if ref in probes:
                slot = probes.pop(ref)
                try:
                    info = ray.get(ref)
                except ActorUnavailableError as exc:  # still restarting: ask again a little later
                    give_up = restarting.get(slot, (0.0, time.monotonic() + RESTART_TIMEOUT))[1]
                    if time.monotonic() < give_up:
                        restarting[slot] = (time.monotonic() + PROBE_INTERVAL, give_up)
                    else:
                        restarting.pop(slot, None)
                        last_death = f"a worker did not come back in {RESTART_TIMEOUT:.0f} s: {exc}"
                    continue
                except RayActorError as exc:
                    restarting.pop(slot, None)
                    last_death = str(exc).splitlines()[0]
                    continue  # gone for good (out of restarts, or its node is lost)
                restarting.pop(slot, None)
                if info.error is None and info.record == record:
                    healthy.add(slot)
                else:
                    why = info.error or (
                        f"it built another model or settings (key {(info.record or {}).get('key')} vs "
                        f"{record['key']}): check the checkpoint on every node"
                    )
                    last_death = f"Ray worker on {info.node} left out: {why}"
                    warnings.warn(last_death, stacklevel=2)
                bar.set_postfix_str(f"{len(healthy)} workers")
                continue
            slot, job, attempts = in_flight.pop(ref)
            load[slot] -= 1
            try:
                name, masks, why = ray.get(ref)
            except RayActorError as exc:
                last_death = str(exc).splitlines()[0]
                if slot in healthy:  # first failure seen of this worker: no more work until it answers again
                    healthy.discard(slot)
                    probes[actors[slot].ready.remote()] = slot
                    bar.set_postfix_str(f"{len(healthy)} workers")
                if attempts + 1 >= max_attempts:
                    summary.failed.append((str(job.path), f"its Ray worker died {attempts + 1} times on it"))
                    bar.update(1)
                else:
                    pending.appendleft((job, attempts + 1))
                    summary.resubmitted += 1
                continue
            except RayTaskError as exc:
                raise _cause(exc) from None
            if why is not None:
                summary.failed.append((str(job.path), why))
            else:
                summary.done.append(name)
                summary.masks += int(masks or 0)
            bar.update(1)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
