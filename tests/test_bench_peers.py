"""python -m bench.peers end to end on loopback, with this checkout as its own baseline (the
peers need their own venvs, so they are left out): every case and round is reported, a batch a
server refuses is reported as refused, and the overload cases count 503s."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.servers import REPO


def test_peers_bench_reports_every_round_and_the_refusals(tiny_model_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.peers", "--model", str(tiny_model_path),
         "--baseline-tree", str(REPO), "--rounds", "2", "--duration", "1",
         "--batches", "1,3", "--json-batch-limit", "3", "--connections", "2,3",
         "--overload-connections", "8"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env=dict(os.environ, MAX_TENSOR_IMAGES="2"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for case in ("V2 JSON 1 image, 2 conn", "V2 JSON 1 image, 3 conn", "V2 binary 1 image",
                 "/predict 28x28 PNG, 2 conn", "V2 JSON 1 image, 8 conn"):
        for server in ("ours", "baseline"):
            row = re.search(rf"^\| {re.escape(case)} \| {server} \| (\d+) \|", out, re.M)
            assert row and int(row.group(1)) > 0, (case, server, out)
            rounds = re.search(rf"^  {re.escape(case)} \| {server}: (.*)$", out, re.M)
            assert rounds and rounds.group(1).count(";") == 1, out  # two rounds, both shown
    # over MAX_TENSOR_IMAGES: not measured, said so
    assert re.search(r"^\| V2 binary 3 images \| ours \| refused: HTTP 400", out, re.M), out
    assert "V2 JSON 1 image, 2 conn, ours / baseline:" in out
    assert re.search(r"^  ours: \d+/\d+, \d+/\d+, \d+/\d+$", out, re.M), out  # 3 processes
