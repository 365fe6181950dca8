# digitgrad inference service: gunicorn + Flask serving a model.npz written by `python -m trainer`.
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10): it
# builds only the stages the target needs, so a plain `docker build .` never runs the training,
# and the RUN --mount and COPY --chmod flags below need it. No `# syntax=` line: the engine's
# built-in frontend builds this file, so a build never has to pull a frontend image.
#
# Stages, in build order:
#   base           the pinned Python image and the environment every stage shares
#   build          builds the digitgrad wheel
#   app            base image + a virtual env in /opt/venv: the locked dependencies and that wheel
#   mnist          empty; override with --build-context mnist=DIR to train on local MNIST files
#   train          runs `python -m trainer`, writes /model/model.npz (downloads MNIST if not given)
#   model-none     no model: mount one at run time          (MODEL_SOURCE=none, the default)
#   model-train    the model trained by the train stage     (MODEL_SOURCE=train)
#   model-context  ./$MODEL_FILE from the build context     (MODEL_SOURCE=context)
#   model          the model-* stage that MODEL_SOURCE names
#   runtime        the image that is run (the default target, so it must stay the last stage)
#
# Where the model comes from:
#   docker build -t digitgrad .                                      no model in the image:
#       docker run -v "$PWD/model.npz:/app/model.npz:ro" -p 8000:8000 digitgrad
#   docker build --build-arg MODEL_SOURCE=context -t digitgrad .     bakes ./model.npz in
#       (--build-arg MODEL_FILE=path: another file, once .dockerignore lets it through)
#   docker build --build-arg MODEL_SOURCE=train -t digitgrad .       trains, then bakes it in
#   docker build --target train .                                    only trains
#   docker build --target model-train --output type=local,dest=. .  trains, writes
#       ./model/model.npz here (--build-arg EPOCHS=N; --build-context mnist=DIR: local MNIST)
# A mounted file always wins over a baked one: it is mounted over the same path, MODEL_PATH.
# A baked-in model is made readable by the service user whatever its mode in the build context.
#
# Dependencies come from requirements.lock: exact versions, each download checked against its
# hashes, so a build next year installs what was tested. Refresh it with `make lock` (README).
#
# pip uses its defaults (pypi.org) unless given a config file as a build secret, which no layer
# keeps: another index, a proxy, or a CA bundle for a TLS-inspecting proxy (its `cert` setting
# pointing at /run/secrets/pip-cert, the second secret):
#   docker build --secret id=pip.conf,src=my-pip.conf [--secret id=pip-cert,src=ca.pem] .

ARG MODEL_SOURCE=none

# Pinned to an exact Python and Debian release. Not pinned by digest: our machines cannot reach a
# registry to read it. Pin it where one can: docker buildx imagetools inspect <this image>,
# then FROM python:3.11.14-slim-bookworm@sha256:<digest>.
FROM python:3.11.14-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

FROM base AS build
WORKDIR /src
# Only what the wheel is built from, so edits to tests or docs keep this stage cached.
COPY pyproject.toml README.md ./
COPY autodiff/ autodiff/
COPY models/ models/
COPY trainer/ trainer/
COPY server/ server/
# Only digitgrad's own wheel: its dependencies come from the lock file, in the app stage. The
# cache mount keeps pip's downloads between builds; the secrets are optional (see the top).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-cert \
    python3 -m pip wheel --no-deps --wheel-dir /wheels .

FROM base AS app
# A virtual env at the same path in every base image (the interpreter itself is wherever the base
# has it), without pip: the base's pip installs into it, and the service needs no pip.
RUN python3 -m venv --without-pip /opt/venv
# The locked dependencies first, in a layer of their own that changes only with the lock file;
# --require-hashes also refuses any dependency the lock leaves out. Then the wheel, offline:
# pip checks that the lock satisfies it. Bind mounts leave no copy of either file behind.
RUN --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-cert \
    python3 -m pip --python /opt/venv/bin/python install --require-hashes \
        --requirement /tmp/requirements.lock
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        /wheels/digitgrad-*.whl
# Only now: above, python3 must still be the base's, which has pip.
ENV PATH=/opt/venv/bin:$PATH

FROM scratch AS mnist

FROM app AS train
# The fonts the trainer sets its typed letters and digits in (trainer/typefaces.py): the
# Debian packages of the project's machines, pinned as bookworm has them, so that the image
# trains the model a machine does (without them it trains without, and says so).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core=2.37-6 \
        fonts-dejavu-extra=2.37-6 fonts-liberation=1:1.07.4-11 \
    && rm -rf /var/lib/apt/lists/*
# Unset: the trainer's own default number of epochs.
ARG EPOCHS
WORKDIR /model
# MNIST comes from the mnist stage: empty unless --build-context mnist=DIR supplies the four
# *-ubyte.gz files; missing files are downloaded into the mount (rw: discarded after this step).
RUN --mount=type=bind,from=mnist,target=/mnist,rw \
    python -m trainer --data-dir /mnist --out /model/model.npz ${EPOCHS:+--epochs "$EPOCHS"} \
        --checkpoint-dir /tmp/checkpoints --quiet

# The three model-* stages hold /model/model.npz, or an empty /model/ (WORKDIR creates it);
# `model` is the one MODEL_SOURCE names.
FROM scratch AS model-none
WORKDIR /model

# --chmod: the service user (uid 10001) must read the model, whoever wrote it with whatever umask.
FROM scratch AS model-train
COPY --from=train --chmod=0444 /model/model.npz /model/model.npz

FROM scratch AS model-context
ARG MODEL_FILE=model.npz
COPY --chmod=0444 ${MODEL_FILE} /model/model.npz

# hadolint's DL3006 (tag your images) cannot tell that model-${MODEL_SOURCE} names one of the
# stages above, not an image: ignored on this line only, so an untagged FROM elsewhere still fails.
# hadolint ignore=DL3006
FROM model-${MODEL_SOURCE} AS model

FROM app AS runtime
LABEL org.opencontainers.image.title="digitgrad" \
      org.opencontainers.image.description="Handwritten-digit recognition over HTTP" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric id, so that Kubernetes' runAsNonRoot can check it; no home, no login shell.
# (Not --system: Debian warns when a system account's id is above 999.)
RUN groupadd --gid 10001 digitgrad \
    && useradd --uid 10001 --gid digitgrad --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin digitgrad
WORKDIR /app
# Owned by root and read-only for the service user (whatever their mode in the checkout): it
# writes only under /dev/shm (the shared metrics: their own tmpfs, which a full /tmp cannot
# reach) and, if anything, /tmp.
COPY --chmod=0444 gunicorn.conf.py docker/healthcheck.py ./
COPY --from=model /model/ ./
# One BLAS thread per process: gunicorn's workers are the parallelism (see gunicorn.conf.py).
# WEB_CONCURRENCY (workers) is left to gunicorn.conf.py; set it to the container's CPU limit.
ENV MODEL_PATH=/app/model.npz \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/dev/shm/digitgrad-metrics \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1
USER 10001:10001
EXPOSE 8000
# python:slim has no curl: the probe is a small stdlib script that reads PORT/BIND like the config.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "/readyz"]
# Exec form: gunicorn is PID 1 and receives docker stop's SIGTERM itself (graceful shutdown).
CMD ["gunicorn", "--config", "gunicorn.conf.py", "server:create_app()"]
