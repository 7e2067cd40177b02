"""The early forecast of a run's length, on a fake clock: when it is said, what it says, the
time budget's stopping step, the second forecast once the GAN makes steps slower, and the
forecast with the validations once one was timed."""
import math

import pytest

from runtime import pace
from runtime.pace import Pace, duration


@pytest.fixture
def clock(monkeypatch):
    """A clock that advances only when told to."""
    now = [1000.0]
    monkeypatch.setattr(pace.time, "time", lambda: now[0])
    return now


def run(p, clock, steps, seconds_per_step):
    """Steps 1..steps at a fixed cost (or a cost per step, a function); the forecasts said."""
    said = []
    for step in range(1, steps + 1):
        clock[0] += seconds_per_step(step) if callable(seconds_per_step) else seconds_per_step
        said.append(p.after_step(step))
    return [(step, line) for step, line in enumerate(said, start=1) if line]


@pytest.mark.parametrize("seconds, text", [(40, "40 s"), (89, "89 s"), (2940, "49 min"),
                                           (9360, "2.6 h")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_one_forecast_after_the_warmup_and_the_timed_steps(clock, capsys):
    said = run(Pace(0, 100, 50), clock, 100, 2.0)
    assert said == [(22, "pace: 2.00 s per step (steps 3-22); at this pace the 78 steps left take "
                         "about 3 min more on this machine, validations not counted")]
    assert capsys.readouterr().out == said[0][1] + "\n"


def test_the_warmup_is_not_timed_and_a_resumed_run_starts_from_its_step(clock):
    slow_start = lambda step: 30.0 if step <= 52 else 1.0  # resumed at 50: 2 slow steps
    said = run(Pace(50, 200, 100), clock, 200, slow_start)
    assert said[0][0] == 72 and said[0][1].startswith("pace: 1.00 s per step (steps 53-72)")


def test_a_time_budget_that_ends_first_names_the_step_it_stops_near(clock):
    deadline = clock[0] + 100.0  # 100 s for a run of 1000 steps of 1 s
    said = run(Pace(0, 1000, 100, deadline), clock, 30, 1.0)
    assert said[0][1].splitlines()[1] == (
        "note: at this pace the time budget stops the run near step 100 of 1000, so its "
        "result will not be the recipe's; --resume continues it")
    roomy = run(Pace(0, 1000, 100, clock[0] + 2000.0), clock, 30, 1.0)
    assert "note" not in roomy[0][1]


def test_a_second_forecast_where_steps_become_slower(clock):
    gan = lambda step: 1.0 if step <= 50 else 3.0  # the GAN from step 51 on
    p = Pace(0, 100, 40, slower_from=50, why_slower="the PatchGAN trains")
    said = run(p, clock, 100, gan)
    assert [step for step, _ in said] == [22, 72]
    assert said[0][1].endswith("; from step 50 the PatchGAN trains and steps cost more: a "
                               "second forecast follows there")
    assert said[1][1] == ("pace: 3.00 s per step (steps 53-72); at this pace the 28 steps left "
                          "take about 84 s more on this machine, validations not counted")


@pytest.mark.parametrize("kwargs", [dict(enabled=False),  # ranks other than 0
                                    dict(start_step=90)])  # too few steps left to time
def test_silent(clock, kwargs):
    p = Pace(**{"start_step": 0, "total_steps": 110, "steps_per_epoch": 50, **kwargs})
    assert run(p, clock, 110, 1.0) == [] and p.deadline == math.inf


def test_the_first_validation_completes_the_forecast_once(clock):
    p = Pace(0, 1000, 100)
    run(p, clock, 100, lambda step: 2.0 if step <= 22 else 1.0)  # the steps speed up
    p.validation_starts()
    clock[0] += 60.0
    # over steps 3-100: (20 * 2 + 78 * 1) / 98 s; then 900 steps and 9 validations left
    per_step = 118 / 98
    assert p.validation_ends(100) == (
        f"pace: {per_step:.2f} s per step (steps 3-100) and 60 s per validation; with 9 more, "
        f"the 900 steps left take about {(900 * per_step + 540) / 60:.0f} min more")
    p.validation_starts()
    clock[0] += 60.0
    assert p.validation_ends(200) is None


def test_a_validation_before_any_forecast_or_at_the_end_says_nothing(clock):
    early = Pace(0, 1000, 10)
    run(early, clock, 10, 1.0)
    early.validation_starts()
    assert early.validation_ends(10) is None  # no pace measured yet
    last = Pace(0, 100, 100)
    run(last, clock, 100, 1.0)
    last.validation_starts()
    assert last.validation_ends(100) is None  # nothing left to forecast


def test_validations_inside_the_timed_steps_are_not_counted_as_steps(clock):
    p = Pace(0, 1000, 10)  # a validation every 10 steps, inside the first 22
    said = []
    for step in range(1, 23):
        clock[0] += 1.0
        said.append(p.after_step(step))
        if step % 10 == 0:
            p.validation_starts()
            clock[0] += 50.0
            said.append(p.validation_ends(step))
    # the validation at step 10 came before any forecast; the one at 20 was after the
    # clock started, and neither counts as step time
    assert [line for line in said if line] == [
        "pace: 1.00 s per step (steps 3-22); at this pace the 978 steps left take about 16 min "
        "more on this machine, validations not counted"]
    p.validation_starts()
    clock[0] += 50.0
    assert p.validation_ends(22).startswith("pace: 1.00 s per step (steps 3-22) and 50 s per validation")
