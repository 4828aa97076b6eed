"""The quality table's arithmetic (``bench.quality``): means with their standard errors, job counts,
and the partial view a sweep prints while jobs are missing."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.quality import partial_table, summarise


def _row(method: str, family: str, fidelity: float, subject: float, din: str = "", dout: str = "") -> dict:
    return {
        "method": method,
        "family": family,
        "din": din,
        "dout": dout,
        "fidelity": fidelity,
        "subject_rate": subject,
        "drift": 0.1,
        "leak": 0.0,
        "alignment": 1.0,
        "trainable_parameters": 0,
        "seconds_per_step": 0.0,
    }


def test_each_mean_carries_its_standard_error_over_the_jobs():
    values = [0.70, 0.80, 0.95]
    rows = [_row("tap attn2o->ffni", "tap", v, 0.5, "attn2o", "ffni") for v in values] + [
        _row("base", "base", 0.6, 0.0)
    ]
    summary = {e["method"]: e for e in summarise(rows)}
    tap = summary["tap attn2o->ffni"]
    assert tap["jobs"] == 3
    assert tap["fidelity"] == pytest.approx(statistics.fmean(values))
    assert tap["fidelity_se"] == pytest.approx(statistics.stdev(values) / math.sqrt(3))
    assert tap["subject_rate_se"] == pytest.approx(0.0)
    assert summary["base"]["fidelity_se"] is None  # one job: no error to give
    assert [e["method"] for e in summarise(rows)] == ["base", "tap attn2o->ffni"]  # the table's order


def test_the_partial_view_names_how_many_jobs_each_mean_rests_on():
    rows = [_row("base", "base", 0.6, 0.0)] + [_row("OFT r=4", "oft", v, 0.25) for v in (0.7, 0.9)]
    text = partial_table(rows)
    assert "| base | 1 | 0.600 |" in text
    assert "| OFT r=4 | 2 | 0.800 ± 0.100 |" in text
