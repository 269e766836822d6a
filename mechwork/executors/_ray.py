"""Ray: the same units on a pool of actors, each loading a model once and keeping it.

Imported only when a Ray executor is asked for (``--ray``, ``executor="ray"``): nothing else in mechwork
imports Ray. Actors restart when their process dies and Ray reruns the task that was in flight there
(``max_restarts=-1, max_task_retries=-1``), so a killed worker costs time, not results: every unit is a
pure function of its payload, and results are combined by unit key, not by arrival order.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from ._local import Executor, OnDone, check_unique_keys
from ._units import ModelSpec, Unit, UnitFailed, WorkerContext, run_unit

# Passed to every worker: a worker that could reach a hub must behave like the driver that cannot.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MECHWORK_CACHE", "HF_HOME")


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray executor needs Ray: pip install 'mechwork[ray]'") from exc
    return ray


class _Worker:
    """The actor body: a :class:`WorkerContext` that outlives the units it runs."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.context = WorkerContext()

    def pid(self) -> int:
        return os.getpid()

    def run(self, unit: Unit) -> Any:
        return run_unit(self.context, unit)


def _init_with_retry(ray, address: str | None, options: dict, attempts: int = 3) -> None:
    """``ray.init``, tried again when a local node misses Ray's fixed 30 s startup window (an overloaded
    machine); said on stderr each time, and the last failure is raised."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, **options)
            return
        except Exception as exc:  # Ray raises a bare Exception for a node that timed out during startup
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            print(f"mechwork: Ray's local node did not start in time (attempt {attempt} of {attempts}); "
                  "retrying", file=sys.stderr)
            ray.shutdown()


class RayExecutor(Executor):
    """Units on ``workers`` Ray actors of ``threads`` CPU threads each (and ``gpus_per_worker`` of a GPU:
    needed where the driver's model is on CUDA, since workers load it onto the same kind of device).

    ``address=None`` starts a local Ray instance (``ray.init()``); otherwise it connects to that cluster
    (``"auto"``, ``"ray://host:10001"``, ...). A Ray session already started by the caller is reused.
    Actors start on the first :meth:`run` and stay until :meth:`close`, keeping their loaded models.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, threads: int = 1,
                 gpus_per_worker: float | int = 0, init_options: dict | None = None) -> None:
        self.address, self.threads, self.init_options = address, threads, dict(init_options or {})
        self.gpus_per_worker = gpus_per_worker  # Ray gives each actor that share of a GPU (CUDA_VISIBLE_DEVICES)
        self._requested = workers
        self._actors: list = []
        self._loaded: dict[int, set[ModelSpec]] = {}
        self._started_ray = False

    @property
    def workers(self) -> int:
        return len(self._actors) if self._actors else (self._requested or 0)

    def _start(self) -> None:
        if self._actors:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            options = {"include_dashboard": False, "log_to_driver": False,
                       "runtime_env": {"env_vars": env}, **self.init_options}
            if self.address is None:
                options.setdefault("num_cpus", max(os.cpu_count() or 1, (self._requested or 1) * self.threads))
            _init_with_retry(ray, self.address, options)
            self._started_ray = True
        count = self._requested or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
        actor = ray.remote(num_cpus=self.threads, num_gpus=self.gpus_per_worker, max_restarts=-1,
                           max_task_retries=-1)(_Worker)
        self._actors = [actor.remote(self.threads) for _ in range(count)]
        self._loaded = {i: set() for i in range(count)}

    def worker_pids(self) -> list[int]:
        """The process id of each actor (tests kill one to show a run survives it)."""
        ray = _import_ray()
        self._start()
        return ray.get([a.pid.remote() for a in self._actors])

    def _next_unit(self, worker: int, pending: deque[Unit]) -> Unit:
        """Prefer a unit whose model this worker already holds: models load once per worker."""
        for i, unit in enumerate(pending):
            if unit.model is None or unit.model in self._loaded[worker]:
                del pending[i]
                return unit
        return pending.popleft()

    def run(self, units: Sequence[Unit], *, on_done: OnDone | None = None) -> dict[str, Any]:
        check_unique_keys(units)
        ray = _import_ray()
        self._start()
        pending, idle = deque(units), list(range(len(self._actors)))
        in_flight: dict[Any, tuple[int, Unit]] = {}
        results: dict[str, Any] = {}
        while pending or in_flight:
            while idle and pending:
                worker = idle.pop()
                unit = self._next_unit(worker, pending)
                in_flight[self._actors[worker].run.remote(unit)] = (worker, unit)
            finished, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in finished:
                worker, unit = in_flight.pop(ref)
                results[unit.key] = self._result(ray, ref, unit)
                if unit.model is not None:
                    self._loaded[worker].add(unit.model)
                idle.append(worker)
                if on_done is not None:
                    on_done(unit.key, results[unit.key])
        return results

    @staticmethod
    def _result(ray, ref, unit: Unit) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise UnitFailed(str(cause) if cause is not None else f"unit {unit.key!r} failed: {exc}") from exc

    def close(self) -> None:
        if not self._actors:
            return
        ray = _import_ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._loaded = [], {}
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
