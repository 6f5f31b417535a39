"""The chaos suite's smoke run (``benchmarks/chaos.py``): every trial once, at small sizes.

The fault trials share one private Redis and one worker per agent (a module fixture, as
``python -m benchmarks.chaos --smoke --runs 1`` does); the fuzzer runs 20 plans. Each trial
must end with nothing duplicated, no stale or forged write accepted, no hang, no worker
death, no traceback, no loss nobody reported, the campaigns ending as the trial requires,
and every stalled task acted on within 30 s. A failure message carries the trial's notes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.chaos import DETECT_LIMIT_S, TRIALS, Params, Rig, TrialResult, run_trial
from buddy.errors import InfrastructureError
from tests.helpers import require

pytestmark = pytest.mark.integration

FAULT_TRIALS = [t for t in TRIALS if t != "fuzz_plans"]


@pytest.fixture(scope="module")
def chaos_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rig, Path, Params]]:
    """The smoke parameters, a work directory and a started rig (Redis + one worker per agent)."""
    params = Params.smoke_params()
    work = tmp_path_factory.mktemp("chaos")
    rig = Rig(work, settings=params.settings)
    try:
        rig.start()
    except InfrastructureError as e:
        require(e, "no Redis server")
    try:
        yield rig, work, params
    finally:
        rig.close()


def assert_promises_kept(res: TrialResult, runs: int) -> None:
    shown = "\n".join([f"{res.trial}: {res}", *res.summary_notes()])
    assert res.runs == runs, shown
    assert res.duplicated == 0, shown
    assert res.stale_accepted == 0, shown
    assert res.hangs == 0, shown
    assert res.worker_deaths == 0, shown
    assert res.tracebacks == 0, shown
    assert res.lost == 0, shown
    assert res.unexpected == 0, shown
    assert res.max_detect_s is None or res.max_detect_s <= DETECT_LIMIT_S, shown


@pytest.mark.parametrize("trial", FAULT_TRIALS)
def test_fault_trial_once(chaos_rig: tuple[Rig, Path, Params], trial: str) -> None:
    rig, work, params = chaos_rig
    res = run_trial(trial, rig, params, work)
    assert_promises_kept(res, params.runs)
    if trial == "worker_kill_pop":
        # the fault really was a lost message (or the note says the window was missed)
        assert res.tags.get("pop window hit", 0) + res.tags.get("pop window missed", 0) == 1
    if trial == "paused_lease":
        assert res.statuses.get("second succeeded") == 1, res.summary_notes()


def test_fuzzed_plans(tmp_path: Path) -> None:
    params = Params.smoke_params()
    res = run_trial("fuzz_plans", None, params, tmp_path)
    assert_promises_kept(res, params.fuzz)
    assert res.tags.get("buddy validate runs", 0) >= 1
