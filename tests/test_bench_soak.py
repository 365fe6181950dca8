"""bench/soak.py's verdict on synthetic figures: no failed request, every worker flat to 10%."""

from __future__ import annotations

from bench.deployment import Answer
from bench.soak import report


def figures(growth: float, failed: int = 0) -> tuple[list[Answer], list[tuple]]:
    """Two minutes of answers (10 a second) and memory samples of two workers."""
    answers = [Answer(started=t / 10, seconds=0.01 + t % 7 / 1000,
                      status=500 if t < failed else 200, request_id=f"r{t}")
               for t in range(1200)]
    workers = [("digitgrad1", 7), ("digitgrad2", 9)]
    samples = [(t, replica, pid, int(50_000 * (1 + growth * (t >= 60))))
               for t in range(5, 120, 10) for replica, pid in workers]
    return answers, samples


def test_flat_memory_and_no_failures_pass(capsys):
    assert report(*figures(growth=0.05), started=0.0, minutes=2)
    out = capsys.readouterr().out
    assert "1200 requests, 0 failed" in out and "digitgrad1/7 +5.0%" in out
    rows = [line.split() for line in out.splitlines() if line[:6].strip().isdigit()]
    assert [row[:3] for row in rows] == [["1", "600", "0"], ["2", "600", "0"]]
    assert rows[1][5:] == ["51.3", "51.3"], "each worker's mean RSS in MiB"


def test_growth_above_ten_percent_or_a_failed_request_fails(capsys):
    assert not report(*figures(growth=0.11), started=0.0, minutes=2)
    assert not report(*figures(growth=0.0, failed=1), started=0.0, minutes=2)
    assert "pass: False" in capsys.readouterr().out
