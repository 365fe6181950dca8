"""The compose deployment (compose.yaml: HAProxy, two replicas, Prometheus), run by real engines.

Without an engine: the compose files as compose itself reads them (both networks), checked for
what the deployment relies on: every replica behind the proxy and scraped by Prometheus, the
model mounted read-only from $MODEL_FILE, everything on 127.0.0.1 on the host's network, and
images built only from the base image the service's Dockerfile names.

With an engine (docker-compose or `docker compose`, a daemon, the base image; tests/engines.py):
the deployment on the host's network (compose.host.yaml, as CI's daemon has no bridge network)
on free ports, with a model written by the trainer, under 16 clients posting through the proxy:
a replica SIGKILLed and started again, 64 clients trickling headers, a rolling model update
with docker/rollout.py, Prometheus' view of every replica, and request ids from the client to
the replica's JSON log line and back. Then the default network (compose.override.yaml) once.
Without an engine these skip, saying why; under CI (CI=true) they fail instead.

The load phases last seconds: bench/soak.py is the long run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from drawing import digit_png
from engines import REPO, base_image, connect, unavailable

from bench.deployment import (
    BRIDGE_NETWORK,
    HOST_NETWORK,
    Deployment,
    HeaderTrickle,
    Load,
    compose_command,
    failed,
    get,
    percentile,
)
from bench.loadgen import upload
from bench.servers import OPENER

PNG = digit_png(28)
HAPROXY_CFG = REPO / "docker" / "haproxy" / "haproxy.cfg"
DEPLOYMENT_DOCKERFILES = [REPO / "docker" / "haproxy" / "Dockerfile",
                          REPO / "docker" / "prometheus" / "Dockerfile"]


# --- the files, as compose reads them ----------------------------------------------------------

def compose_config(files: tuple[str, ...], **env: str) -> dict:
    """The merged configuration `docker-compose config` prints (compose's own reading)."""
    command = shutil.which("docker-compose")
    if command is None:
        unavailable("no docker-compose on PATH (Debian: apt-get install docker-compose)")
    result = subprocess.run([command, *(a for f in files for a in ("-f", f)), "config"],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


@pytest.mark.parametrize("files", [BRIDGE_NETWORK, HOST_NETWORK])
def test_every_replica_is_behind_the_proxy_and_scraped_by_prometheus(files):
    services = compose_config(files)
    replicas = sorted(name for name in services if name.startswith("digitgrad"))
    assert len(replicas) >= 2, services.keys()
    proxy, prometheus = services["proxy"]["environment"], services["prometheus"]["environment"]
    servers = re.findall(r'^\s*server (\S+) "\$\{(\w+)\}"', HAPROXY_CFG.read_text(), re.M)
    assert [name for name, _ in servers] == replicas, "one `server` line per replica"
    addresses = [proxy[variable] for _, variable in servers]
    assert prometheus["DIGITGRAD_TARGETS"].split() == addresses, "Prometheus scrapes each one"
    for name, address in zip(replicas, addresses):
        port = address.rsplit(":", 1)[1]
        bind = services[name].get("environment", {}).get("BIND")
        assert bind is None and port == "8000" or bind == address, (name, bind, address)
        (volume,) = services[name]["volumes"]
        assert volume["target"] == "/app/model.npz" and volume["read_only"] is True
        assert volume["type"] == "bind" and volume["source"] == str(REPO / "model.npz")


def test_the_host_network_keeps_everything_on_loopback():
    services = compose_config(HOST_NETWORK, PROXY_PORT="18000")
    assert {s.get("network_mode") for s in services.values()} == {"host"}
    assert not [name for name, s in services.items() if s.get("ports")]
    listening = [s["environment"]["BIND"] for s in services.values()]
    listening.append(services["proxy"]["environment"]["STATS_BIND"])
    assert all(address.startswith("127.0.0.1:") for address in listening), listening
    assert services["proxy"]["environment"]["BIND"] == "127.0.0.1:18000"
    assert services["prometheus"]["environment"]["BIND"] == "127.0.0.1:9090"


def test_the_default_network_publishes_the_proxy_and_prometheus_on_loopback():
    services = compose_config(BRIDGE_NETWORK, MODEL_FILE="/models/new.npz")
    published = {name: [published_port(p) for p in s.get("ports", [])]
                 for name, s in services.items()}
    assert published["proxy"] == [(None, 8000), ("127.0.0.1", 8404)]
    assert published["prometheus"] == [("127.0.0.1", 9090)]
    assert services["digitgrad1"]["volumes"][0]["source"] == "/models/new.npz"


def published_port(port: str | dict) -> tuple[str | None, int]:
    """(host address or None, port) of a published port, in either of compose's notations."""
    if isinstance(port, str):  # "127.0.0.1:8404:8404/tcp"
        parts = port.split("/")[0].split(":")
        return (parts[0] if len(parts) == 3 else None), int(parts[-2])
    return port.get("host_ip"), int(port["published"])


@pytest.mark.parametrize("dockerfile", DEPLOYMENT_DOCKERFILES, ids=lambda p: p.parent.name)
def test_deployment_images_build_on_the_service_base_image(dockerfile):
    lines = dockerfile.read_text().splitlines()
    assert not re.fullmatch(r"#\s*syntax\s*=.*", lines[0], re.I)
    assert [line.split()[1] for line in lines if line.startswith("FROM ")] == [base_image()]


# --- a real engine -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker() -> str:
    """The BuildKit client, once compose can drive it."""
    client = connect().client
    command = compose_command(client)
    if shutil.which(command[0]) is None:
        unavailable("neither `docker compose` nor docker-compose is installed")
    return client


def train(path: Path, mnist_dir: Path, seed: int) -> Path:
    """A small model written by `python -m trainer` itself (a few seconds)."""
    from trainer.__main__ import main

    argv = ["--data-dir", str(mnist_dir), "--no-download", "--arch", "mlp", "--hidden-dim",
            "32", "--layers", "1", "--train-size", "2000", "--epochs", "1", "--no-augment",
            "--seed", str(seed), "--out", str(path), "--checkpoint-dir",
            str(path.parent / f"checkpoints-{seed}"), "--quiet"]
    assert main(argv) == 0
    return path


@pytest.fixture(scope="module")
def models(mnist_dir, tmp_path_factory) -> list[Path]:
    """Two different models: the one served first, and the one rolled out."""
    top = tmp_path_factory.mktemp("compose-models")
    return [train(top / f"model-{seed}.npz", mnist_dir, seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def deployment(docker, models):
    """compose.yaml + compose.host.yaml, up and every replica in the proxy's rotation."""
    running = Deployment(docker, models[0])
    try:
        running.up()
        yield running
    finally:
        running.down()


def model_id(path: Path) -> str:
    from server.model import LoadedModel

    return LoadedModel(path).model_id


def log_lines(deployment: Deployment, service: str, since: float | None = None) -> list[dict]:
    """The replica's JSON request lines (gunicorn's own lines left out)."""
    return [json.loads(line) for line in deployment.logs(service, since).splitlines()
            if line.startswith("{")]


def predict(url: str, headers: dict) -> tuple[dict, str | None]:
    """POST the digit to url/predict: the answer and the X-Request-ID that came back."""
    body, content_type = upload(PNG)
    request = urllib.request.Request(url + "/predict", data=body,
                                     headers={"Content-Type": content_type, **headers})
    with OPENER.open(request, timeout=30) as response:
        return json.loads(response.read()), response.headers.get("X-Request-ID")


def test_request_ids_reach_the_replica_log_and_come_back(deployment):
    answer, echoed = predict(deployment.proxy, {"X-Request-ID": "client-abc.123"})
    assert echoed == "client-abc.123"
    _, generated = predict(deployment.proxy, {})
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    lines = {line["request_id"]: line for service in deployment.replicas
             for line in log_lines(deployment, service)}
    logged = lines["client-abc.123"]
    assert (logged["route"], logged["status"], logged["model"]) == (
        "/predict", 200, answer["model"])
    assert logged["digit"] == answer["digit"] and "confidence" in logged
    assert lines[generated]["route"] == "/predict"
    proxy_log = deployment.logs("proxy")  # HAProxy logs the id it passed and the one back
    assert "{client-abc.123} {client-abc.123}" in proxy_log and f"{{}} {{{generated}}}" in proxy_log


def test_prometheus_sees_every_replica_up_and_its_request_rate(deployment):
    instances = {deployment.replica_url(s).removeprefix("http://") for s in deployment.replicas}

    def rates() -> dict[str, float]:
        result = deployment.query('sum by (instance) (rate(digitgrad_http_requests_total'
                                  '{job="digitgrad", route="/predict"}[20s]))')
        return {r["metric"]["instance"]: float(r["value"][1]) for r in result}

    with Load(deployment.proxy, PNG, clients=4, pause=0.05):
        deployment.wait(lambda: set(rates()) == instances and min(rates().values()) > 0,
                        "a /predict rate for every replica", seconds=90)
    up = {r["metric"]["instance"]: r["value"][1]
          for r in deployment.query('up{job="digitgrad"}')}
    assert up == {instance: "1" for instance in instances}
    assert deployment.query('up{job="haproxy"}')[0]["value"][1] == "1"


#: Requests the SIGKILL test sends at least, so that its 0.1% allows a few failures: the
#: responses the killed replica was writing (headers sent, body not), which no proxy can repeat.
KILL_TEST_REQUESTS = 4000


def test_a_replica_killed_under_load_costs_no_request_and_comes_back(deployment, docker):
    victim = "digitgrad1"
    container = deployment.container(victim)

    def run(*args: str) -> str:
        return subprocess.run([docker, *args], check=True, capture_output=True, text=True,
                              timeout=60).stdout

    def serving_again() -> bool:
        lines = log_lines(deployment, victim, since=started.timestamp())
        return deployment.proxy_status().get(victim) == "UP" and any(
            line["request_id"].startswith("kill-") for line in lines)

    with Load(deployment.proxy, PNG, clients=16, prefix="kill") as load:
        time.sleep(2)
        killed = time.time()
        run("kill", "--signal", "KILL", container)  # a manual stop: no restart policy
        run("start", container)
        started = datetime.fromisoformat(json.loads(run(
            "inspect", "--format", "{{json .State.StartedAt}}", container))[:26] + "+00:00")
        deployment.wait(serving_again, f"{victim} serving the load again")
        recovered = time.time()
        deployment.wait(lambda: len(load.answers) >= KILL_TEST_REQUESTS, "enough requests")
    failures = failed(load.answers)
    summary = (f"{len(load.answers)} requests, {len(failures)} failed "
               f"({[a.status for a in failures][:10]}); {victim} started again "
               f"{started.timestamp() - killed:.1f} s after SIGKILL, served the load again "
               f"{recovered - killed:.1f} s after it")
    print(summary)
    assert len(failures) <= len(load.answers) / 1000, summary


def test_slow_header_clients_are_held_by_the_proxy_not_the_replicas(deployment):
    ports = [deployment.ports[s.upper() + "_PORT"] for s in deployment.replicas]
    with Load(deployment.proxy, PNG, clients=16) as calm:
        time.sleep(3)
    with HeaderTrickle(deployment.proxy, connections=64) as trickle:
        time.sleep(1)
        with Load(deployment.proxy, PNG, clients=16) as load:
            time.sleep(3)
            held = replica_connections(ports)
    assert trickle.opened >= 64
    assert not failed(load.answers), [a.status for a in failed(load.answers)][:10]
    # The proxy holds the 64 until their headers arrive (never): the replicas see only its
    # connections, about one per request in flight.
    assert held < 48, f"{held} connections to the replicas while 64 clients trickle headers"
    ok = [a.seconds * 1000 for a in load.answers if a.status == 200]
    calm_ok = [a.seconds * 1000 for a in calm.answers if a.status == 200]
    print(f"p99 {percentile(calm_ok, 99):.0f} ms calm, {percentile(ok, 99):.0f} ms with 64 "
          f"trickling; {len(load.answers)} requests, {held} connections to the replicas")


def replica_connections(ports: list[int]) -> int:
    """Established TCP connections to the replicas' ports, as the kernel counts them."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state = int(fields[1].rsplit(":", 1)[1], 16), fields[3]
            count += state == "01" and local_port in ports
    return count


def test_a_rolling_model_update_fails_no_request(deployment, models):
    old, new = model_id(models[0]), model_id(models[1])
    assert old != new
    with Load(deployment.proxy, PNG, clients=16, prefix="roll") as load:
        time.sleep(1)
        result = deployment.rollout(MODEL_FILE=str(models[1]))
        switched = time.monotonic()
        time.sleep(2)
    deployment.env["MODEL_FILE"] = str(models[1])  # what the deployment now serves
    failures = failed(load.answers)
    after = [a for a in load.answers if a.started > switched]
    print(result.stdout.strip(), f"\n{len(load.answers)} requests, {len(failures)} failed")
    assert not failures, [(a.status, a.request_id) for a in failures][:10]
    assert {a.model for a in load.answers if a.started < switched} <= {old, new}
    assert after and {a.model for a in after} == {new}


def test_the_default_network_serves_through_the_published_proxy(docker, models):
    """compose.yaml as `docker compose up -d` reads it (with compose.override.yaml): the replicas
    on compose's own network, only the proxy and Prometheus published."""
    deployment = Deployment(docker, models[0], files=BRIDGE_NETWORK)
    try:
        deployment.up()
        answer, echoed = predict(deployment.proxy, {"X-Request-ID": "bridge-1"})
        assert echoed == "bridge-1" and answer["model"] == model_id(models[0])
        deployment.wait(lambda: [r["value"][1] for r in deployment.query(
            'up{job="digitgrad"}')] == ["1", "1"], "both replicas scraped")
        assert get(deployment.stats + "/stats")[0] == 200
    finally:
        deployment.down()
