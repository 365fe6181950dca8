"""Where a request's CPU goes: py-spy samples of our gunicorn under wrk, by component.

Serves the model with the repo's gunicorn.conf.py (and --baseline-tree DIR's, in the same run,
for a before/after), drives one request with wrk (16 keep-alive connections) and samples every
worker with py-spy, counting only threads that hold the GIL (``--gil``): Python's CPU, not its
waits. Each sample is charged to the first component its stack meets, from the innermost frame
out (COMPONENTS); the shares times the server CPU per request measured meanwhile give
milliseconds per request by component. Native time outside the GIL (the kernel's socket work,
numpy's own loops) is in the CPU per request but not in the samples.

py-spy is a tool, never a dependency: ``python3 -m venv /tmp/tools && /tmp/tools/bin/pip
install py-spy``, then

    python -m bench.request_cpu --py-spy /tmp/tools/bin/py-spy [--baseline-tree DIR]
                                [--request json1|binary1|png] [--duration 10]

py-spy needs ptrace (root, or CAP_SYS_PTRACE in a container).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import server_cpu
from bench.peers import REPO, WRK_SCRIPT, make_cases, run_wrk, start_ours
from bench.servers import stop

#: (component, pattern of a frame "function (file:line)"), tried from the innermost frame out:
#: the first frame that matches any pattern names the component of the sample.
COMPONENTS = [
    ("read deadline (pre_request)", r"pre_request|settimeout"),
    ("compute slot and shedding", r"compute_slot|Semaphore|ComputeSlots|shed_early"),
    ("metrics (prometheus_client)", r"prometheus_client|server/metrics\.py"),
    ("JSON decode", r"json/decoder|orjson.*loads|_split_body"),
    ("JSON encode", r"json/encoder|flask/json|_infer_response|OrjsonProvider"),
    ("numpy conversions and checks", r"_json_data|_pixels|_input_data|numpy/"),
    ("model forward", r"server/model\.py|autodiff/|models/"),
    ("imaging (decode, to 28x28)", r"server/imaging|PIL/"),
    ("request log", r"server/requestlog\.py|logging/|glogging"),
    ("werkzeug request/response", r"werkzeug/"),
    ("Flask dispatch, our routes and fast path", r"flask/|server/(?!worker\.py|shedding\.py)"),
    ("gunicorn HTTP parse and write", r"gunicorn/http/|gunicorn/util\.py"),
    ("gunicorn worker loop and threads", r"gunicorn/|server/worker\.py|server/shedding\.py|"
                                         r"concurrent/futures|threading\.py|selectors\.py|"
                                         r"queue\.py"),
]
REQUESTS = {"json1": "V2 JSON 1 image, 16 conn", "binary1": "V2 binary 1 image",
            "png": "/predict 28x28 PNG, 16 conn"}


def component(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, pattern in COMPONENTS:
            if re.search(pattern, frame):
                return name
    return "other"


def profile(tree: Path, name: str, case, args: argparse.Namespace, workdir: Path) -> dict:
    """{component: ms per request} of ``tree`` serving ``case``, plus the total."""
    folder = workdir / name
    folder.mkdir()
    server = start_ours(name, tree, args.model.resolve(), 2, folder)
    script = folder / "bench.lua"
    script.write_text(WRK_SCRIPT)
    samples = folder / "samples.txt"
    try:
        run_wrk(server.url(case.path), case, case.connections, 2, script)  # warm-up
        before = server_cpu(server.process.pid)
        spy = subprocess.Popen(
            [args.py_spy, "record", "--pid", str(server.process.pid), "--subprocesses", "--gil",
             "--nonblocking", "--rate", "250", "--format", "raw",
             "--duration", str(round(args.duration)), "-o", str(samples)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attached
        row = run_wrk(server.url(case.path), case, case.connections, args.duration, script)
        after = server_cpu(server.process.pid)
        spy.wait(timeout=60)
    finally:
        stop(server.process, timeout=60)
    cpu_ms = 1e3 * (sum(after.values()) - sum(before.values())) / max(row["requests"], 1)
    counts: collections.Counter = collections.Counter()
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():  # (a process title with a line break splits its line)
            counts[component(stack)] += int(count)
    total = sum(counts.values()) or 1
    shares = {k: v / total for k, v in counts.items()}
    return {"cpu_ms": cpu_ms, "rps": row["rps"], "samples": total, "shares": shares}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", required=True, help="the py-spy executable (see above)")
    parser.add_argument("--model", type=Path, default=REPO / "model.npz")
    parser.add_argument("--baseline-tree", type=Path,
                        help="another checkout of this repository, profiled the same way")
    parser.add_argument("--request", choices=sorted(REQUESTS), default="json1")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="digitgrad-bench-cpu-") as tmp:
        workdir = Path(tmp)
        options = argparse.Namespace(batches=[1], connections=[16], json_batch_limit=1,
                                     overload_connections=0)
        case = next(c for c in make_cases(workdir, options) if c.name == REQUESTS[args.request])
        trees = {"ours": REPO}
        if args.baseline_tree:
            trees["baseline"] = args.baseline_tree.resolve()
        results = {name: profile(tree, name, case, args, workdir) for name, tree in trees.items()}
    print(f"{case.name}, 2 workers, wrk 16 connections, {args.duration:g} s each; py-spy --gil "
          "samples charged to components, times the server CPU per request")
    names = [n for n, _ in COMPONENTS] + ["other"]
    print("| component | " + " | ".join(f"{t} ms/req (share)" for t in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in names:
        cells = [f"{r['cpu_ms'] * r['shares'].get(name, 0):.3f} ({r['shares'].get(name, 0):.0%})"
                 for r in results.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| server CPU per request (all) | "
          + " | ".join(f"{r['cpu_ms']:.3f}" for r in results.values()) + " |")
    print("| req/s meanwhile; samples | "
          + " | ".join(f"{r['rps']:.0f}; {r['samples']}" for r in results.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
