#!/usr/bin/env bash
# Install the runtime and builder into .venv, build a capsule from the shipped Python FAQ
# (examples/python-faq, PSF licence) and answer a few questions from it on the edge runtime.
set -euo pipefail
source "$(dirname "$0")/_setup.sh"
OUT="${OUT_DIR:-out/demo}"
mkdir -p "$OUT"
rm -f "$OUT"/publisher.key "$OUT"/publisher.pub "$OUT"/device.key "$OUT"/device.pub
export PATH="$PWD/.venv/bin:$PATH"
# The demo keeps its device state (time floor, version records) beside its files, not in the
# system store /var/lib/edge-capsules.
export EDGE_STORE_DIR="${EDGE_STORE_DIR:-$OUT/store}"
set -x
firmware-tools keygen --kind publisher -o "$OUT/publisher.key"
firmware-tools keygen --kind device -o "$OUT/device.key"
firmware-tools build examples/python-faq/docs -o "$OUT/python-faq.capsule" \
    --signing-key "$OUT/publisher.key" --recipient "$OUT/device.pub" --expires +365d --version 1 \
    --publisher-name "Edge Capsules demo"
edge verify "$OUT/python-faq.capsule" --trust "$OUT/publisher.pub" --identity "$OUT/device.key"
edge search "$OUT/python-faq.capsule" "Why is Python slow compared to C?" -k 2 \
    --trust "$OUT/publisher.pub" --identity "$OUT/device.key"
edge search "$OUT/python-faq.capsule" "How do I make an executable from a Python script?" -k 2 \
    --trust "$OUT/publisher.pub" --identity "$OUT/device.key"
edge search "$OUT/python-faq.capsule" "Is there a tool to help find bugs or perform static analysis?" -k 2 \
    --trust "$OUT/publisher.pub" --identity "$OUT/device.key"
