"""The Ray executor without a Ray cluster: the job-file keys, the missing-extra error, and how
``RayWorkerPool`` turns Ray's errors into outcomes (a scripted ``ray`` module that raises
Ray's real exception classes; tests/integration/test_ray_pool.py runs the real thing)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import ray.exceptions

from coordinator.core.errors import ConfigError, ServiceError
from coordinator.core.jobspec import JobSpec, parse_job
from coordinator.core.ports import SliceOutcome, SliceTask
from coordinator.core.values import (
    CommitToken,
    Epoch,
    Offset,
    OffsetRange,
    PartitionId,
    Scope,
    Slice,
)
from coordinator.run import ray_pool
from coordinator.run.ray_pool import RayWorkerPool
from coordinator.run.runner import RunnerConfig, default_pool

rex: Any = ray.exceptions  # Ray's real exception classes (untyped)


def job(backfill: dict[str, Any]) -> JobSpec:
    doc = {
        "stream": {"bootstrap": "127.0.0.1:9092", "topic": "orders"},
        "schema": {"event_time": "ts", "fields": {"id": "int64", "ts": "timestamp_ms"}},
        "table": {"format": "lance", "uri": "t.lance"},
        "backfill": backfill,
    }
    return parse_job(doc, base_dir=Path("/nonexistent-seamline"), default_id="orders")


def test_the_executor_defaults_to_processes_and_takes_a_ray_address() -> None:
    assert job({}).backfill.executor == "process" and job({}).backfill.ray.address is None
    spec = job({"executor": "ray", "ray": {"address": "ray://head:10001"}}).backfill
    assert (spec.executor, spec.ray.address) == ("ray", "ray://head:10001")


@pytest.mark.parametrize(
    ("backfill", "expected"),
    [
        ({"executor": "dask"}, "key=backfill.executor: Input should be 'process' or 'ray'"),
        ({"ray": {"address": "ray://head:10001"}}, 'expected backfill.executor = "ray"'),
        ({"executor": "ray", "ray": {"adress": "x"}}, "unknown key (did you mean 'address'?)"),
        ({"executor": "ray", "ray": {"address": "ray://a b"}}, "expected a Ray address like"),
    ],
)
def test_bad_executor_settings_are_refused_at_load(backfill: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        job(backfill)
    assert expected in str(info.value)


def test_an_address_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        job({"executor": "ray", "ray": {"address": "ray://admin:hunter2@head:10001"}})
    assert "without credentials" in str(info.value) and "hunter2" not in str(info.value)


def test_without_the_extra_the_ray_executor_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError) as info:
        default_pool(RunnerConfig("m:f", pool="ray"))
    assert 'executor = "ray"' in str(info.value) and "install seamline[ray]" in str(info.value)


class ScriptedRay:
    """Enough of the ``ray`` module for the pool: each task's result or error is scripted."""

    exceptions = rex

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.names: list[str] = []
        self.remote_options: dict[str, Any] = {}

    def is_initialized(self) -> bool:
        return True  # a session the caller opened: the pool neither starts nor stops it

    def remote(self, **options: Any) -> Any:
        self.remote_options = options
        outer = self

        class Fn:
            def options(self, name: str) -> Any:
                outer.names.append(name)
                return self

            def remote(self, task: SliceTask, _settings: Any) -> str:
                return task.slice_.slice_id  # the "object ref"

        return lambda _fn: Fn()

    def wait(self, refs: list[str], num_returns: int, timeout: float | None = None) -> Any:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: str) -> SliceOutcome:
        value = self.script[ref]
        if isinstance(value, BaseException):
            raise value
        return SliceOutcome(ref, error=value, retriable=False)

    def shutdown(self) -> None:
        raise AssertionError("the pool must not shut down a session it did not start")


class UnstartableRay(ScriptedRay):
    """A Ray whose start-up always fails (a raylet that misses Ray's start-up deadline)."""

    def __init__(self) -> None:
        super().__init__({})
        self.inits = self.shutdowns = 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.inits += 1
        raise Exception("The current node timed out during startup.")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_ray_that_does_not_start_is_retried_then_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = UnstartableRay()
    monkeypatch.setattr(ray_pool, "import_ray", lambda: fake)
    pool = RayWorkerPool(2)
    with pytest.raises(ServiceError) as info:
        pool.submit(slice_task("a"))
    assert fake.inits == ray_pool.INIT_ATTEMPTS == fake.shutdowns
    assert "expected a Ray session on a local Ray, found none after 3 attempts" in str(info.value)
    assert "timed out during startup" in str(info.value) and pool.in_flight() == 0


def slice_task(sid: str) -> SliceTask:
    rng = (OffsetRange(PartitionId(0), Offset(0), Offset(1)),)
    token = CommitToken("job", sid, 1, Epoch(1), "backfill", rng)
    return SliceTask("m:f", object(), Slice(sid, Scope("kafka", rng)), token)


def test_ray_errors_become_outcomes_a_dead_worker_is_retriable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script: dict[str, Any] = {
        "ok": "ran",  # run_one's own outcome comes back as it is
        "crashed": rex.WorkerCrashedError(),
        "node": rex.NodeDiedError("node 1 died"),
        "exit": rex.RayTaskError("f", "tb", SystemExit(3)).as_instanceof_cause(),
        "raised": rex.RayTaskError("f", "tb", KeyError("k")).as_instanceof_cause(),
        "unschedulable": rex.TaskUnschedulableError("no node fits"),
    }
    fake = ScriptedRay(script)
    monkeypatch.setattr(ray_pool, "import_ray", lambda: fake)
    pool = RayWorkerPool(len(script))
    for sid in script:
        pool.submit(slice_task(sid))
    assert fake.names == list(script)  # task names are the slice ids, nothing else
    assert fake.remote_options["max_retries"] == 0  # only the runner retries a slice
    out = {o.slice_id: o for o in pool.completed(1.0)}
    assert pool.in_flight() == 0 and set(out) == set(script)
    assert out["ok"].error == "ran" and not out["ok"].worker_died
    for sid in ("crashed", "node", "exit"):
        assert out[sid].worker_died and out[sid].retriable, out[sid]
    assert pool.deaths == 3
    assert not out["raised"].worker_died and not out["raised"].retriable  # KeyError: terminal
    assert out["raised"].error is not None and "KeyError" in out["raised"].error
    assert not out["unschedulable"].worker_died
    pool.shutdown()


class _Sink:
    def ensure_table(self) -> None:
        pass


def test_a_ray_task_makes_its_worker_keep_the_jobs_sink_between_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ray worker has no multiprocessing parent; the task marks it as a slice worker, so
    its next slices reuse the job's catalog and table like a local pool worker's do."""
    import multiprocessing
    from collections import OrderedDict

    from backfill import executor
    from coordinator.core import role

    opened: list[_Sink] = []

    def open_sink(_: JobSpec) -> _Sink:
        opened.append(_Sink())
        return opened[-1]

    monkeypatch.setattr(executor, "open_sink", open_sink)
    monkeypatch.setattr(executor, "_SINKS", OrderedDict())
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: None)
    monkeypatch.setattr(role, "_SLICE_WORKER", False)
    spec = job({})
    assert executor.worker_sink(spec)[0] is not executor.worker_sink(spec)[0]  # not a worker
    assert len(opened) == 2

    rng = (OffsetRange(PartitionId(0), Offset(0), Offset(1)),)
    slice_ = Slice("k-p0-000000000-000000001", Scope("kafka", rng))
    token = CommitToken("orders", slice_.slice_id, 1, Epoch(1), "backfill")
    task = SliceTask("x:y", spec, slice_, token)
    monkeypatch.setattr(ray_pool, "run_one", lambda *_: SliceOutcome(slice_.slice_id, error="x"))
    ray_pool._worker_run(task, ("WARNING", False))
    first, key = executor.worker_sink(spec)
    assert key is not None and executor.worker_sink(spec)[0] is first and len(opened) == 3
