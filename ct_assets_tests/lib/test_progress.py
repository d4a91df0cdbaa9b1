"""Progress: plain lines off a terminal, one bar redrawn in place on one, and `ct simulate`'s."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from ct_assets import cli
from ct_assets.lib.progress import ERASE_TO_END, Progress, duration, is_terminal, wanted


class Terminal(io.StringIO):
    """A stream that says it is a terminal (the bar's output is read back from it)."""

    encoding = "utf-8"  # as a terminal's in a UTF-8 locale (a StringIO has none)

    def isatty(self) -> bool:
        return True


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def colour_terminal(monkeypatch):
    """A terminal 60 columns wide that may draw (as set by a user, not by the test host)."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "60")


def drawn(output: str) -> list[str]:
    """Each state of the bar's line, as the terminal shows it (escape codes removed)."""
    return [part.replace(ERASE_TO_END, "").rstrip("\n")
            for line in output.split("\n") for part in line.split("\r") if part]


def test_plain_lines_one_per_step_without_carriage_returns(clock):
    stream = io.StringIO()
    with Progress(3, stream=stream, clock=clock) as progress:
        for name, seconds in [("raw_events 2026-11-01", 1.5), ("raw_events 2026-11-02", 0.25),
                              ("raw_events 2026-11-03", 75)]:
            progress.start(name)
            clock.now += seconds
            progress.done("ok")
        progress.say("    a note of its own")
    assert stream.getvalue() == ("[1/3] raw_events 2026-11-01  ok  1.5 s\n"
                                 "[2/3] raw_events 2026-11-02  ok  0.2 s\n"
                                 "[3/3] raw_events 2026-11-03  ok  1:15\n"
                                 "    a note of its own\n")


def test_plain_lines_count_without_a_total_and_time_since_the_last_step(clock):
    stream = io.StringIO()
    with Progress(stream=stream, clock=clock) as progress:
        clock.now += 2
        progress.done(name="2026-01-01")  # a step never started: it began at the last end
        clock.now += 3
        progress.done("50 rows", name="2026-01-02")
    assert stream.getvalue() == "[1] 2026-01-01  2.0 s\n[2] 2026-01-02  50 rows  3.0 s\n"


@pytest.mark.parametrize("variable", [("NO_COLOR", "1"), ("TERM", "dumb")])
def test_no_color_and_a_dumb_terminal_ask_for_plain_lines(monkeypatch, variable, clock):
    monkeypatch.setenv(*variable)
    stream = Terminal()
    assert not is_terminal(stream, Terminal())
    with Progress(1, stream=stream, stdout=Terminal(), clock=clock) as progress:
        progress.start("step")
        progress.done()
    assert stream.getvalue() == "[1/1] step  0.0 s\n"


def test_a_bar_needs_both_stderr_and_stdout_on_a_terminal():
    assert is_terminal(Terminal(), Terminal())
    assert not is_terminal(Terminal(), io.StringIO())  # `ct run > summary.txt`
    assert not is_terminal(io.StringIO(), Terminal())  # `ct run 2> log`


def test_the_bar_redraws_one_line_within_the_width_and_ends_with_a_newline(clock):
    stream = Terminal()
    with Progress(4, stream=stream, stdout=Terminal(), tick=None, clock=clock) as progress:
        for day in range(1, 5):
            progress.start(f"data_job 2026-01-0{day} … 2026-01-0{day} and a long tail of words")
            clock.now += 2
            progress.done("ok")
    output = stream.getvalue()
    assert output.endswith("\n") and output.count("\n") == 1  # one line, ended once
    assert "\r" in output and ERASE_TO_END in output
    states = drawn(output)
    assert all(len(state) <= 59 for state in states), states
    assert states[0].startswith("[░░░░") and " 0/4  data_job 2026-01-01" in states[0]
    assert "…" in states[0]  # the name was cut to fit
    halfway = states[3]  # the second step ended: 2 of 4, 4 s spent, 2 s a step
    assert re.match(r"\[█+░+\] 2/4  data_job 2026-01-02 .*  4\.0 s  ETA 4\.0 s$", halfway)
    assert halfway.index("░") - 1 == halfway.index("]") // 2  # half of the cells filled
    assert re.match(r"\[█+\] 4/4  done  8\.0 s$", states[-1])  # no ETA once it is done


def test_a_narrow_terminal_cuts_the_line_and_drops_the_bar(monkeypatch, clock):
    for columns in (30, 12, 3):
        monkeypatch.setenv("COLUMNS", str(columns))
        stream = Terminal()
        with Progress(120, stream=stream, stdout=Terminal(), tick=None,
                      clock=clock) as progress:
            progress.start("retrain_job (drift: feature_drift failed for 2026-01-15)")
            clock.now += 61
            progress.done("ok")
        states = drawn(stream.getvalue())
        assert all(len(state) <= columns - 1 for state in states), (columns, states)
    monkeypatch.setenv("COLUMNS", "30")
    progress = Progress(120, stream=Terminal(), stdout=Terminal(), tick=None, clock=clock)
    progress.name, progress.count, progress.spent = "retrain_job", 1, 61.0
    assert progress.render(30) == "1/120  r…  0.0 s  ETA 2:00:59"  # 29 characters


def test_eta_is_the_mean_step_times_the_steps_left(clock):
    progress = Progress(12, stream=Terminal(), stdout=Terminal(), tick=None, clock=clock)
    assert progress.eta() is None  # no step done: nothing to go on
    for seconds in (1, 2, 3):
        progress.start("step")
        clock.now += seconds
        progress.done()
    assert progress.eta() == pytest.approx(18.0)  # 2 s a step, 9 to go
    assert "ETA 18.0 s" in progress.render(80)
    progress.start("step")
    clock.now += 1.5
    assert progress.eta() == pytest.approx(16.5)  # counts down while the step runs
    clock.now += 5
    assert progress.eta() == pytest.approx(16.0)  # a long step: its share is spent, not more
    progress.done()
    assert progress.eta() == pytest.approx(12.5 / 4 * 8)  # 12.5 s over 4 steps, 8 to go
    progress.total = None  # a total no longer known: a counter, neither bar nor ETA
    assert progress.eta() is None
    assert progress.render(80) == "[4]  step  12.5 s"
    progress.close()


def test_kept_steps_stay_above_the_bar(clock):
    stream = Terminal()
    with Progress(2, stream=stream, stdout=Terminal(), keep=True, tick=None,
                  clock=clock) as progress:
        progress.start("retrain_job (no model deployed yet)")
        clock.now += 1
        progress.done("REJECTED")
        progress.say("    candidate v1 rejected: roc_auc below gate.min_value")
    output = stream.getvalue()
    kept = [line.split("\r")[-1].replace(ERASE_TO_END, "") for line in output.split("\n")]
    assert kept[:2] == ["[1/2] retrain_job (no model deployed yet)  REJECTED  1.0 s",
                        "    candidate v1 rejected: roc_auc below gate.min_value"]
    assert output.endswith("\n")


def test_an_error_ends_the_line_where_the_work_stopped(clock):
    stream = Terminal()
    with pytest.raises(KeyboardInterrupt), Progress(
            5, stream=stream, stdout=Terminal(), tick=None, clock=clock) as progress:
        progress.start("scoring_job 2026-01-01 … 2026-01-14")
        raise KeyboardInterrupt
    assert stream.getvalue().endswith("\n")
    assert "0/5  scoring_job" in drawn(stream.getvalue())[-1]


def test_the_bar_moves_while_a_long_step_runs():
    stream = Terminal()
    with Progress(1, stream=stream, stdout=Terminal(), tick=0.01) as progress:
        progress.start("training")
        deadline = time.monotonic() + 2
        while stream.getvalue().count("\r") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stream.getvalue().count("\r") >= 3


def test_disabled_progress_writes_nothing(clock):
    stream = Terminal()
    with Progress(2, stream=stream, stdout=Terminal(), enabled=False, clock=clock) as progress:
        progress.start("step")
        progress.done("ok")
        progress.say("a note")
    assert stream.getvalue() == ""


def test_json_output_shows_progress_only_on_a_terminal():
    assert wanted(False, io.StringIO())
    assert not wanted(True, io.StringIO())  # a program reading the JSON and the stderr
    assert wanted(True, Terminal())


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0 s"), (4.24, "4.2 s"),
                                               (59.9, "59.9 s"), (59.97, "1:00"),
                                               (65, "1:05"), (3725, "1:02:05")])
def test_durations(seconds, text):
    assert duration(seconds) == text


def simulator_project(root: Path) -> Path:
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"source": "simulator"},
                                    "storage": {"dir": "data"}}), encoding="utf-8")
    return path


def test_ct_simulate_writes_one_plain_line_per_day_on_stderr(tmp_path, capsys):
    path = simulator_project(tmp_path)
    capsys.readouterr()
    assert cli.main(["--config", str(path), "simulate", "--days", "3", "--start", "2026-03-02",
                     "--rows-per-day", "50"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("landed 3 days (2026-03-02 … 2026-03-04), 50 rows/day")
    lines = err.splitlines()
    assert len(lines) == 3 and "\r" not in err and "\x1b" not in err, err
    for number, (line, day) in enumerate(zip(lines, ["02", "03", "04"], strict=True), 1):
        assert re.fullmatch(rf"\[{number}/3\] 2026-03-{day}  50 rows  \d+\.\d s", line), line

    assert cli.main(["--config", str(path), "simulate", "--days", "3", "--start", "2026-03-05",
                     "--rows-per-day", "50", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["first_day"] == "2026-03-05"  # stdout: one JSON document
    assert err == ""  # and, off a terminal, no progress with --json
