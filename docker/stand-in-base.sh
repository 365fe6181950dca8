#!/usr/bin/env bash
# Make a stand-in for the Dockerfile's base image, for machines that reach Debian's mirrors and
# PyPI but no image registry (CI here): Debian bookworm's own Python, tagged with the exact name
# the Dockerfile's FROM uses, so that the Dockerfile builds unchanged. Does nothing when an image
# of that name is already there (pulled for real, or made by an earlier run), which keeps CI fast.
#
#   docker/stand-in-base.sh          needs: docker (daemon running), mmdebstrap; run as root
#
# Its Python is Debian's /usr/bin/python3 (3.11), where the real image has /usr/local/bin/python
# (the pinned 3.11.x): the Dockerfile relies only on `python3 -m venv`, which both have.
set -euo pipefail
cd "$(dirname "$0")/.."

image=$(sed -n 's/^FROM \([^ ]*\) AS base$/\1/p' Dockerfile)
if [ -z "$image" ]; then
    echo "stand-in-base.sh: no 'FROM <image> AS base' line in Dockerfile" >&2
    exit 1
fi
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "stand-in-base.sh: $image is already there"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="digitgrad-stand-in-rootfs:bookworm"
mmdebstrap --quiet --variant=apt \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$work/rootfs.tar"
docker import "$work/rootfs.tar" "$rootfs" >/dev/null
# This machine's CA bundle: pip in the build reaches the package index through whatever TLS this
# machine trusts. Debian marks its Python externally managed; the real image does not.
cp /etc/ssl/certs/ca-certificates.crt "$work/"
cat >"$work/Dockerfile" <<EOF
FROM $rootfs
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
LABEL org.opencontainers.image.description="stand-in for $image made by docker/stand-in-base.sh"
EOF
docker build --quiet --network host -t "$image" "$work" >/dev/null
docker rmi "$rootfs" >/dev/null
echo "stand-in-base.sh: made $image from Debian bookworm"
