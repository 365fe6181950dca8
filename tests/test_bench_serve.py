"""python -m bench.serve end to end on loopback (short, Python client): its table, ratios and
the --floor server, whose /predict skips decoding and the model but is otherwise the service."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from serving import gunicorn_env

from bench.servers import OPENER, REPO, gunicorn_process


def test_serve_bench_reports_the_ratios_and_the_floor(tiny_model_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--model", str(tiny_model_path),
         "--floor", "--client", "python", "--concurrency", "2", "--duration", "0.5",
         "--rounds", "1", "--workers", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in ("GET /healthz", "POST /predict 28x28 PNG", "POST /predict 400x300 JPEG",
                "POST /predict PNG, no work"):
        assert f"\n{row} " in out
    assert "small-PNG /predict / /healthz throughput:" in out
    assert "ceiling of small-PNG /predict / /healthz on this stack" in out


def test_floor_config_serves_fixed_answers_through_the_real_app(tiny_model_path, tmp_path):
    env = gunicorn_env(tiny_model_path, tmp_path / "metrics", WEB_CONCURRENCY="1")
    floor_config = REPO / "bench" / "floor_gunicorn.conf.py"
    with gunicorn_process(env, tmp_path / "log", config=floor_config) as (base, _):
        request = urllib.request.Request(f"{base}/predict", data=b"not even an image",
                                         headers={"Content-Type": "image/png"})
        with OPENER.open(request, timeout=10) as response:
            body = json.load(response)
            assert response.headers["X-Content-Type-Options"] == "nosniff"  # the real app's
        assert body["probabilities"] == [0.1] * 10 and body["digit"] == 0
