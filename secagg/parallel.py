"""Where per-client and per-cell work runs: in this process (:class:`LocalExecutor`) or on Ray.

An executor applies a module-level function to a list of items, ``fn(*shared, item)``, and returns
the results in item order. ``shared`` holds the arguments every item needs (model, global weights,
configuration): :class:`RayExecutor` stores each of them once per call in Ray's object store
(``ray.put``) instead of serializing it into every task. Because the work it runs (local training, a
benchmark cell) is a pure function of its arguments, results are bit-identical to the local loop,
provided the tasks use as many torch intra-op threads as the loop did: torch's CPU kernels split
float sums by thread count, so 1 and 2 threads differ in the last bits (RayExecutor's default copies
the driver's count), and the workers run the same torch build on the same kind of CPU.

Trust: Ray moves task arguments and results between processes with (cloud)pickle. That is fine for
our own objects inside a cluster we operate (the driver and its workers trust each other) and it
never crosses a trust boundary: nothing here unpickles data received from a client or peer. Do not
point ``address`` at a Ray cluster you do not control.

Ray is an optional dependency (``pip install 'secagg[ray]'``), imported only when a
:class:`RayExecutor` is used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, TypeVar

from secagg.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

RAY_MISSING = "ray backend: the 'ray' package is not installed; pip install 'secagg[ray]'"


class ClientExecutor(ABC):
    """Runs ``fn(*shared, item)`` for every item; ``fn`` must be a module-level (picklable) function."""

    @abstractmethod
    def map(self, fn: Callable[..., R], items: Sequence[T], *shared: Any) -> list[R]:
        """``[fn(*shared, item) for item in items]``, in item order; the first exception raised by a
        call propagates (for :class:`RayExecutor`, as a ``RayTaskError`` that is also an instance of
        the original exception class)."""

    @abstractmethod
    def as_completed(self, fn: Callable[..., R], items: Sequence[T], *shared: Any
                     ) -> Iterator[tuple[int, R]]:
        """``(index, fn(*shared, items[index]))`` for every item, in the order the calls finish."""

    def close(self) -> None:
        """Release what the executor started (nothing by default)."""
        return None

    def __enter__(self) -> ClientExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(ClientExecutor):
    """A plain loop in this process (the default)."""

    def map(self, fn: Callable[..., R], items: Sequence[T], *shared: Any) -> list[R]:
        return [fn(*shared, item) for item in items]

    def as_completed(self, fn: Callable[..., R], items: Sequence[T], *shared: Any
                     ) -> Iterator[tuple[int, R]]:
        for i, item in enumerate(items):
            yield i, fn(*shared, item)


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(RAY_MISSING) from exc
    return ray


def ray_available() -> bool:
    """Whether the optional ``ray`` package can be imported."""
    try:
        _import_ray()
    except ConfigError:
        return False
    return True


def _call(fn: Callable[..., R], threads: int, item: Any, *shared: Any) -> R:
    # runs on a Ray worker: Ray has already resolved the ObjectRefs in ``shared`` to their values
    import torch

    torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1; the numbers depend on the count
    return fn(*shared, item)


_REMOTE: dict[str, Any] = {}  # the ray.remote wrapper of _call, built once per process


class RayExecutor(ClientExecutor):
    """One Ray task per item, on the cluster at ``address`` or on a local Ray.

    Ray is initialized only if it is not already (``address=None`` starts a local Ray with
    ``num_cpus`` CPUs, default all); :meth:`close` shuts it down again only if this executor started
    it, so an application (or a test) that called ``ray.init`` itself keeps its cluster.

    Each task runs with ``threads`` torch intra-op threads and reserves as many CPUs (so tasks never
    oversubscribe a node). Default: ``torch.get_num_threads()`` of this process when the work is
    submitted, which keeps results bit-identical to :class:`LocalExecutor`. ``threads=1`` runs the
    most tasks at once (small models gain little from intra-op threads), at the price of last-bit
    float differences from a loop that used more threads.
    Raises :class:`ConfigError` if ray is not installed.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 threads: int | None = None) -> None:
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"num_cpus: must be >= 1, got {num_cpus}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {threads}")
        self.address = address
        self.num_cpus = num_cpus
        self.threads = threads
        self._ray = _import_ray()
        self._started = False

    def _remote(self) -> Any:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
            self._started = True
        if "call" not in _REMOTE:
            _REMOTE["call"] = ray.remote(_call)
        return _REMOTE["call"]

    def _submit(self, fn: Callable[..., Any], items: Sequence[Any], shared: tuple[Any, ...]) -> list[Any]:
        import torch

        remote = self._remote()
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        # once per call, not once per task: every task gets references to the same stored objects
        refs = [self._ray.put(s) for s in shared]
        # reserve the CPUs the task's threads use, but never more than a node has (else it would
        # wait forever); the thread count itself is what the numbers depend on, so it stays
        biggest = max((n["Resources"].get("CPU", 0) for n in self._ray.nodes() if n.get("Alive")), default=1)
        task = remote.options(num_cpus=max(1, min(threads, int(biggest))))
        return [task.remote(fn, threads, item, *refs) for item in items]

    def map(self, fn: Callable[..., R], items: Sequence[T], *shared: Any) -> list[R]:
        if not items:
            return []
        return list(self._ray.get(self._submit(fn, items, shared)))

    def as_completed(self, fn: Callable[..., R], items: Sequence[T], *shared: Any
                     ) -> Iterator[tuple[int, R]]:
        if not items:
            return
        pending = self._submit(fn, items, shared)
        index = {ref: i for i, ref in enumerate(pending)}
        try:
            while pending:
                ready, pending = self._ray.wait(pending, num_returns=1)
                for ref in ready:
                    yield index[ref], self._ray.get(ref)
        finally:
            for ref in pending:  # the caller stopped early (or a task failed): drop the rest
                self._ray.cancel(ref)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


__all__ = ["RAY_MISSING", "ClientExecutor", "LocalExecutor", "RayExecutor", "ray_available"]
