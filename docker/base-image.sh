#!/usr/bin/env bash
# Make sure the CPU Dockerfile's base image (its `ARG PYTHON_IMAGE`, python:3.11-slim-bookworm) is
# in the local engine: already there (kept from an earlier run), else pulled, else made here.
#
#   docker/base-image.sh            # the Dockerfile's default base image
#   docker/base-image.sh IMAGE      # another python:3.11 bookworm tag
#
# Made here means: Debian bookworm (whose python3 is 3.11) built with debootstrap, with python3,
# python3-venv, pip and ca-certificates, `python` on PATH (python-is-python3), and this machine's
# CA bundle, so that pip inside `docker build` reaches the package index through whatever TLS
# interception the machine's network uses; then `docker import`ed under the image's name with the
# official image's PATH, LANG and CMD. It stands in for the official image where Docker Hub
# cannot be reached (CI here); it carries this machine's CAs, so never push it. Needs root.
# Cold: ~2 minutes (debootstrap from the mirror); cached: under a second (docs/DEPLOY.md).
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
say() { echo "base-image: $*" >&2; }

if docker image inspect "$image" >/dev/null 2>&1; then
    say "$image is in the engine (cached)"
    exit 0
fi
if timeout 120 docker pull --quiet "$image" >/dev/null 2>&1; then
    say "$image pulled"
    exit 0
fi
case "$image" in
    python:3.11*bookworm) ;;
    *) say "cannot pull $image, and only python:3.11*bookworm can be made here"; exit 1 ;;
esac
say "cannot pull $image: making it with debootstrap from $mirror"
if ! command -v debootstrap >/dev/null; then
    apt-get install -y -q debootstrap >/dev/null
fi

rootfs=$(mktemp -d /var/tmp/segserve-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# This machine's CAs: as the bundle every TLS client reads, where update-ca-certificates would
# keep them if a derived image reran it, and named to pip (its vendored certifi ignores the system).
cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cp "$ca_bundle" "$rootfs/usr/local/share/ca-certificates/build-host-bundle.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm + python3 (docker/base-image.sh); local stand-in, not for push" \
    - "$image" >/dev/null
docker run --rm --network none "$image" \
    python -c 'import ensurepip, sys, venv; assert sys.version_info[:2] == (3, 11), sys.version'
say "$image made: $(docker image inspect --format '{{.Size}}' "$image") bytes"
