"""Ctrl-C between trials is held until the next trial starts; inside a trial it raises at once."""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from autoselect.search.interrupt import TrialInterrupt
from autoselect.search.objective import Outcome
from autoselect.search.optuna_backend import open_study, run_optuna


@pytest.fixture
def python_ctrl_c():
    """Python's own SIGINT handler, also where the suite runs as a background job (SIGINT ignored)."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_between_trials_is_raised_as_the_next_trial_starts(python_ctrl_c):
    guard = TrialInterrupt()
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with guard.installed():
            with guard.trial():
                ran.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # between trials: held, nothing raised here
            ran.append("between")
            with guard.trial():
                ran.append(2)  # never runs: the held Ctrl-C is raised first
    assert ran == [1, "between"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_inside_a_trial_raises_there_and_one_after_the_last_trial_when_the_study_returns(python_ctrl_c):
    guard = TrialInterrupt()
    with pytest.raises(KeyboardInterrupt), guard.installed(), guard.trial():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes, at once
            pass
        raise AssertionError("not interrupted inside the trial")
    with pytest.raises(KeyboardInterrupt):
        with guard.installed():
            with guard.trial():
                pass
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_run_optuna_marks_the_trial_after_a_ctrl_c_between_trials_as_interrupted(tmp_path, python_ctrl_c):
    """A Ctrl-C during Optuna's bookkeeping (here: the after-trial callback) used to escape Optuna's handling and end
    in an UnboundLocalError traceback with the trial left RUNNING."""
    study = open_study(tmp_path / "study.db", resume=False, sampler="random")
    calls = []

    def evaluate(plan, report):
        return Outcome(top1=50.0 + plan["x"], retrained=0.1, latency=1.0, ptq_top1=40.0, steps=1, seconds=0.0,
                       history=[])

    def on_finish(study):
        calls.append(len(study.trials))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_optuna(study, parameters={"x": list(range(50))}, make_plan=dict, evaluate=evaluate, n_trials=20,
                   progress=False, on_finish=on_finish)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL], states
    assert study.trials[1].user_attrs.get("interrupted") is True


def test_ctrl_c_during_a_trials_own_write_waits_for_the_write(python_ctrl_c):
    """A trial's writes to the study (its user attributes: an SQL commit) are held: a Ctrl-C meanwhile is raised just
    after the write when the trial is still working, and at the next trial when its work was done."""
    guard = TrialInterrupt()
    steps = []
    with pytest.raises(KeyboardInterrupt), guard.installed(), guard.trial():
        with guard.held():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
            steps.append("write done")
        steps.append("not reached")
    assert steps == ["write done"]
    steps.clear()
    with pytest.raises(KeyboardInterrupt), guard.installed():
        with guard.trial():
            with guard.held(raise_after=False):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
            steps.append("trial returned")
        with guard.trial():
            steps.append("next trial ran")
    assert steps == ["trial returned"]
