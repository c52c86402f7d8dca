"""Where onnxq's embarrassingly parallel work runs: this machine's processes, or a Ray cluster.

One interface, two implementations, so the sweep and the sensitivity analysis have one code path:

- :meth:`Executor.put` shares a large input (model bytes, calibration or evaluation arrays) with
  every task by reference: Ray puts it in the object store once; locally it is the value itself.
- :meth:`Executor.submit` starts ``fn(*args)`` (args may be references from ``put``) and returns a
  handle; :meth:`Executor.as_completed` yields ``(handle, result)`` as tasks finish;
  :meth:`Executor.cancel` drops what has not run.

``LocalExecutor(jobs=1)`` runs each task inline when its result is asked for (no process, no
pickling: what ``--jobs 1`` always did); ``jobs > 1`` is a spawn-context process pool (spawn, not
fork: forking a process that holds onnxruntime thread pools can deadlock). ``RayExecutor`` runs
each task as a Ray task with ``num_cpus=1`` (one onnxruntime session per CPU), retried up to
``max_retries`` times when its worker dies (Ray's system-failure retry) and on our own
``RetryableError``. A task's exception comes back as itself.

Hand-written over ``concurrent.futures`` and Ray's task API (both used as they are); neither gives
one interface over the other.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from onnxq.errors import OptionError

EXECUTORS = ("local", "ray")
#: Times Ray runs a task again after its worker died.
MAX_RETRIES = 3
INSTALL_RAY = "--executor ray needs Ray: pip install 'onnxq[ray]' (or pip install ray)"


class RetryableError(RuntimeError):
    """Raised by a task for a transient failure: Ray runs it again (locally it fails)."""


class Executor:
    """Runs tasks; see the module docstring."""

    #: Tasks that may run at once (for the caller's progress and its decision to parallelize).
    slots: int = 1
    name: str = "local"

    def put(self, value: Any) -> Any:
        return value

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def as_completed(self, handles: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def cancel(self, handles: Iterable[Any]) -> None:
        del handles

    def close(self) -> None:
        pass

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``[fn(*args) for args in calls]``, run on the executor, in the order of ``calls``."""
        handles = [self.submit(fn, *args) for args in calls]
        index = {id(h): i for i, h in enumerate(handles)}
        results: list[Any] = [None] * len(handles)
        done: set[int] = set()
        try:
            for handle, result in self.as_completed(handles):
                results[index[id(handle)]] = result
                done.add(id(handle))
        except BaseException:
            self.cancel([h for h in handles if id(h) not in done])
            raise
        return results

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class _Inline:
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class LocalExecutor(Executor):
    """This machine: inline with ``jobs=1``, else a process pool of ``jobs`` workers."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise OptionError(f"--jobs must be at least 1, got {jobs}")
        self.slots = jobs
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.slots == 1:
            return _Inline(fn, args)
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.slots, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(fn, *args)

    def as_completed(self, handles: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        inline = [h for h in handles if isinstance(h, _Inline)]
        for handle in inline:
            yield handle, handle.fn(*handle.args)
        pooled = [h for h in handles if not isinstance(h, _Inline)]
        for future in concurrent.futures.as_completed(pooled):
            yield future, future.result()

    def cancel(self, handles: Iterable[Any]) -> None:
        for handle in handles:
            if isinstance(handle, concurrent.futures.Future):
                handle.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """A Ray cluster: ``address`` ``auto`` (a running cluster), ``ray://HOST:PORT`` or ``HOST:PORT``,
    or ``None`` for a local one (``num_cpus`` CPUs). Connects once; leaves a cluster it did not start."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES) -> None:
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
                self._started = True
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.max_retries = max_retries
        self._remote: dict[Any, Any] = {}
        #: What :meth:`put` stored (object references), for the caller and the tests.
        self.puts: list[Any] = []

    def put(self, value: Any) -> Any:
        ref = self._ray.put(value)
        self.puts.append(ref)
        return ref

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            # NOTE: one CPU per task keeps one onnxruntime session per core, so timings inside a
            # task and the number of tasks at once follow the cluster's CPUs
            remote = self._ray.remote(num_cpus=1, max_retries=self.max_retries,
                                      retry_exceptions=[RetryableError])(fn)
            self._remote[fn] = remote
        return remote.remote(*args)

    def as_completed(self, handles: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        pending = list(handles)
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield ref, self._ray.get(ref)
                except self._ray.exceptions.RayTaskError as e:
                    # NOTE: the task's own exception (a UserError stays a UserError)
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None

    def cancel(self, handles: Iterable[Any]) -> None:
        refs = list(handles)
        if not refs:
            return
        # NOTE: only tasks still running: Ray 2.60's core worker aborts the driver process (a failed
        # check in TaskManager::CompletePendingTask) when a task it was told to cancel had already
        # finished (seen in CI, on a task that had just raised)
        _, running = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in running:
            try:
                self._ray.cancel(ref)
            except Exception:  # noqa: BLE001, S110  # NOTE: best effort, as Ray's own cancel
                pass

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OptionError(INSTALL_RAY) from None
    return ray


def make_executor(kind: str = "local", *, jobs: int = 1, address: str | None = None) -> Executor:
    """The executor ``--executor KIND`` names (``--jobs`` for local, ``--ray-address`` for Ray)."""
    if kind == "local":
        return LocalExecutor(jobs)
    if kind == "ray":
        return RayExecutor(address, num_cpus=jobs if jobs > 1 else None)
    raise OptionError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")
