"""bench/bench_quality.py's bookkeeping: the time budget (skip / stop, never silent) and the
max_distortion series check. The runs themselves need SmolLM2 (the script's --quick mode)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench_quality = pytest.importorskip("bench_quality")
Budget, attempt = bench_quality.Budget, bench_quality.attempt


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_run_that_would_not_fit_is_skipped_and_reported():
    clock = FakeClock()
    budget = Budget(100, start=0.0, clock=clock)
    ran = []
    budget.done("radio", 40.0)  # the longest radio run so far
    clock.now = 50.0
    assert attempt(budget, "radio 3", "radio", lambda: ran.append(3))  # 40 <= 50 left
    clock.now = 70.0
    assert not attempt(budget, "radio 4", "radio", lambda: ran.append(4))  # 40 > 30 left
    assert attempt(budget, "RTN", "RTN", lambda: ran.append("rtn"))  # unknown kind: tried
    assert ran == [3, "rtn"]
    assert len(budget.skipped) == 1 and budget.skipped[0].startswith("radio 4 (needs ~40 s")
    clock.now = 101.0
    assert not attempt(budget, "RTN 2", "RTN", lambda: ran.append("late"))  # nothing left
    assert budget.skipped[-1] == "RTN 2 (no time left)"
    assert ran == [3, "rtn"] and len(budget.skipped) == 2


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs SIGALRM")
def test_a_run_still_going_at_the_end_of_the_budget_is_stopped():
    budget = Budget(0.3, start=time.perf_counter())
    t = time.perf_counter()
    assert not attempt(budget, "endless", "radio", lambda: time.sleep(5))
    assert time.perf_counter() - t < 2
    assert budget.stopped and budget.stopped[0].startswith("endless (stopped after")
    text = bench_quality.table_text([{"method": "reference", "bpw": 16.0, "ppl_a": 1.0,
                                      "seconds": 0.0}], "settings", budget)
    assert "stopped: endless" in text


def _row(d, bpw, ppl_a, ppl_b):
    return {"method": f"radio max_distortion={d}", "bpw": bpw, "ppl_a": ppl_a, "ppl_b": ppl_b,
            "seconds": 1.0, "max_distortion": d, "predicted_distortion": d * 0.9}


def test_series_check():
    ref = {"method": "reference", "bpw": 16.0, "ppl_a": 10.0, "ppl_b": 10.0, "seconds": 0.0}
    rows = [ref, _row(0.002, 3.6, 30.0, 25.0), _row(0.008, 2.9, 60.0, 24.0),
            _row(0.004, 3.3, 40.0, 26.0)]
    check = bench_quality.series_check(rows)
    assert [r["max_distortion"] for r in check["rows"]] == [0.008, 0.004, 0.002]
    assert check["sizes"] is True
    assert check["perplexities"] == {"a": True, "b": False}
    text = bench_quality.table_text(rows, "settings")
    assert "sizes monotone: yes, perplexities monotone: yes (a), no (b)" in text
    shrinking = [ref, _row(0.008, 3.0, 60.0, 50.0), _row(0.004, 2.9, 40.0, 30.0)]
    assert bench_quality.series_check(shrinking)["sizes"] is False
    assert bench_quality.series_check([ref, _row(0.008, 3.0, 1, 1)])["sizes"] is None


def test_radio_at_a_baseline_rate_is_needed_only_when_no_cheaper_point_beats_it():
    gptq = {"method": "GPTQ 3-bit g128 asym", "bpw": 3.16, "ppl_a": 129.0, "ppl_b": 74.0}
    rows = [{"method": "radio 3", "bpw": 3.0, "ppl_a": 64.8, "ppl_b": 53.5},
            {"method": "radio 3.25", "bpw": 3.25, "ppl_a": 38.7, "ppl_b": 34.3}, gptq]
    assert bench_quality.dominating_radio_point(rows, gptq)["method"] == "radio 3"
    close = dict(gptq, ppl_b=50.0)  # radio 3 loses on text b; radio 3.25 costs more bits
    assert bench_quality.dominating_radio_point(rows, close) is None


def test_an_unknown_variant_name_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as e:
        bench_quality.main(["--variants", "uniform_quantizer", "no such variant",
                            "--out", "/nonexistent/never-written"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no such variant" in err and "uniform quantizer" in err
