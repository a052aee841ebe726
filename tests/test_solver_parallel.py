"""Solver worker processes (chemistry/parallel.py): bitwise parity with the in-process
`solve_tracks`, worker counts, clear errors (before spawning, or from a failed worker), and
generate writing the same file whatever `generator.solver_workers`."""

import io
import os

import h5py
import numpy as np
import pytest
from fixtures import _enable_compile_cache, tiny_dataset_config
from test_solver import collapse_like_track, tiny_initial, tiny_network

from astrochem_jax import generate, rawio, runtime
from astrochem_jax.chemistry import parallel, solver

RESULT_FIELDS = ("abundances", "result_code", "n_steps", "n_accepted", "n_rejected",
                 "output_time_years")


@pytest.fixture(scope="module", autouse=True)
def _compile_cache():
    """Workers compile through the parent's persistent cache: shared across runs."""
    _enable_compile_cache()


@pytest.fixture(scope="module")
def problem():
    """7 tracers in batches of 3: three batches, the last one padded with two copies."""
    network = tiny_network()
    node_time, physical = collapse_like_track(7)
    out = np.concatenate([[0.0], np.logspace(0, 6, 30)])
    settings = solver.SolverSettings(batch_size=3)
    fn = solver.make_solver(network, settings)  # one trace for every in-process solve here
    reference = solver.solve_tracks(network, tiny_initial(network), node_time, physical, out,
                                    settings, progress=False, solver_fn=fn)
    return network, (tiny_initial(network), node_time, physical, out), settings, fn, reference


class _RecordingPool:
    """Stands in for SolverPool: records the worker count, solves in process."""

    created: list[int] = []
    solver_fn = None

    def __init__(self, network, settings, n_workers, **kwargs):
        self.network, self.settings = network, settings
        _RecordingPool.created.append(n_workers)

    def solve(self, *inputs, progress=True):
        return solver.solve_tracks(self.network, *inputs, self.settings, progress=False,
                                   solver_fn=self.solver_fn)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.fixture
def recording_pool(monkeypatch, problem):
    _RecordingPool.created = []
    _RecordingPool.solver_fn = staticmethod(problem[3])
    monkeypatch.setattr(parallel, "SolverPool", _RecordingPool)
    return _RecordingPool.created


def assert_same_result(got: solver.SolveResult, want: solver.SolveResult) -> None:
    for name in RESULT_FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)  # bitwise: no tolerance
    assert got.species == want.species


def test_two_workers_match_in_process_bitwise(problem, monkeypatch):
    network, inputs, settings, _, reference = problem
    started = []

    class Spy(parallel.SolverPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self.stats)

    monkeypatch.setattr(parallel, "SolverPool", Spy)
    got = parallel.solve_tracks_parallel(network, *inputs, settings, n_workers=2,
                                         progress=False)
    assert [s.n_workers for s in started] == [2]
    assert len(started[0].warmup_s) == 2
    np.testing.assert_array_equal(reference.result_code, 0)
    assert_same_result(got, reference)


def test_worker_counts(problem, recording_pool):
    network, inputs, settings, fn, reference = problem
    # One worker: plain in-process solve_tracks, nothing spawned.
    assert_same_result(parallel.solve_tracks_parallel(network, *inputs, settings, n_workers=1,
                                                      progress=False, solver_fn=fn), reference)
    # One batch (the first 3 tracers): in process whatever the request.
    x0, node_time, physical, out = inputs
    got = parallel.solve_tracks_parallel(network, x0, node_time[:3], physical[:3], out,
                                         settings, n_workers=4, progress=False, solver_fn=fn)
    np.testing.assert_array_equal(got.abundances, reference.abundances[:3])
    assert recording_pool == []
    # More workers than batches: capped at the 3 batches.
    assert_same_result(parallel.solve_tracks_parallel(network, *inputs, settings, n_workers=8,
                                                      progress=False), reference)
    assert recording_pool == [3]
    assert parallel.effective_n_workers(None, 1000, 16) == runtime.usable_cores()
    assert parallel.effective_n_workers(None, 5, 16) == 1
    with pytest.raises(ValueError, match="n_workers"):
        parallel.effective_n_workers(0, 100, 16)
    assert runtime.usable_cores() >= 1


def test_bad_inputs_raise_like_solve_tracks_before_spawning(problem, recording_pool):
    network, (x0, node_time, physical, out), settings, _, _ = problem
    bad_cases = [
        (np.zeros(3), node_time, physical, out),
        (x0, node_time, physical[..., :4], out),
        (x0, node_time, physical, out[::-1]),
    ]
    for case in bad_cases:
        with pytest.raises(ValueError) as want:
            solver.solve_tracks(network, *case, settings, progress=False)
        with pytest.raises(ValueError) as got:
            parallel.solve_tracks_parallel(network, *case, settings, n_workers=2,
                                           progress=False)
        assert str(got.value) == str(want.value)
    assert recording_pool == []


def test_worker_error_names_what_failed(problem):
    """A worker that raises during warm-up: the parent re-raises its error (not a hang)."""
    network, inputs, _, _, _ = problem
    settings = solver.SolverSettings(batch_size=3, solver="euler")
    with pytest.raises(parallel.SolverPoolError, match=r"(?s)warm-up.*'euler'"):
        parallel.solve_tracks_parallel(network, *inputs, settings, n_workers=2, progress=False)


class _DiesWhenUnpickled:
    """A 'network' whose unpickling kills the worker process outright (a hard crash)."""

    name = "crash"

    def __reduce__(self):
        return os._exit, (3,)


def test_dead_worker_is_reported_not_hung():
    with pytest.raises(parallel.SolverPoolError, match="died while warming up"):
        parallel.SolverPool(_DiesWhenUnpickled(), solver.SolverSettings(batch_size=1), 2,
                            initial_abundances=np.ones(1), physical=np.ones(5), n_nodes=2,
                            n_outputs=2)


def test_generate_same_file_whatever_the_worker_count(tmp_path):
    files = {}
    for workers in (1, 2):
        config = tiny_dataset_config(tmp_path / "tiny.h5", n_tracers=8, n_steps=20)
        config.generator.solver.batch_size = 4  # two batches
        config.generator.solver_workers = workers
        stream = io.StringIO()
        written = generate.generate_dataset(config, stream=stream)
        files[workers] = written.rename(tmp_path / f"workers{workers}.h5")
        assert f"{workers} solver process" in stream.getvalue()
    one, two = (rawio.read_raw_dataset(files[w]) for w in (1, 2))
    np.testing.assert_array_equal(one["abundances"], two["abundances"])
    np.testing.assert_array_equal(one["solver"]["n_steps"], two["solver"]["n_steps"])
    assert "solver_workers" not in one["config"]["generator"]
    with h5py.File(files[1]) as a, h5py.File(files[2]) as b:
        np.testing.assert_array_equal(a["data"][()], b["data"][()])
        assert dict(a.attrs) == dict(b.attrs)
    assert files[1].read_bytes() == files[2].read_bytes()
