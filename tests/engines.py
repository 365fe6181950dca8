"""A real Docker engine for the tests (tests/test_docker.py, tests/test_compose.py): the client
that builds with BuildKit, and the checks that skip, saying why, where none can run (under CI,
CI=true, where the engine must run, they fail instead). Nothing here pulls an image."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from bench.deployment import buildkit_client

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
UNDER_CI = os.environ.get("CI") == "true"


def unavailable(reason: str):
    """Skip, saying why; under CI, where the engine must run, fail instead."""
    if UNDER_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def base_image() -> str:
    """The image the `base` stage starts FROM: what docker/stand-in-base.sh must stand in for."""
    for instruction in DockerfileParser(str(DOCKERFILE)).structure:
        words = instruction["value"].split()
        if instruction["instruction"] == "FROM" and words[-1] == "base":
            return words[0]
    raise AssertionError("the Dockerfile has no `FROM <image> AS base`")


@dataclass
class Engine:
    """A docker client talking to a running daemon."""

    client: str

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_BUILDKIT": "1"}
        result = subprocess.run([self.client, *args], env=env, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n"
                        f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result


def connect() -> Engine:
    """The engine, once a BuildKit client, a daemon and the base image are all here."""
    client = buildkit_client()
    if client is None:
        unavailable("no docker client that builds with BuildKit on PATH (Docker 23+ with buildx, "
                    "or Debian's docker.io)")
    docker = Engine(client)
    server = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30)
    if server.returncode != 0:
        unavailable(f"no Docker daemon: {server.stderr.strip()[:300]}")
    if docker("image", "inspect", base_image(), check=False).returncode != 0:
        unavailable(f"the base image {base_image()} is not here, and tests do not pull: "
                    f"`docker pull {base_image()}`, or make a stand-in with "
                    f"docker/stand-in-base.sh")
    return docker
