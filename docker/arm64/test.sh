#!/usr/bin/env bash
# docker/arm64/test.sh - the device image's steps (docker/arm64/Dockerfile) in an emulated
# linux/aarch64 Debian bookworm root, then the runtime's default test suite there, and an
# end-to-end query of capsules built natively on this x86_64 machine.
#
#   bash docker/arm64/test.sh              # everything (see docker/arm64/README.md for timings)
#   bash docker/arm64/test.sh --no-suite   # image steps + x86-built capsules + health check only
#
# What it does, in order (each step prints its duration; the last line sums them):
#   1. host: qemu-user-static, binfmt_misc (qemu-aarch64, F flag), debootstrap
#   2. x86_64: .venv (scripts/_setup.sh); build 4 capsules natively with the x86 builder (FAQ H.264
#      ONNX, the FAQ with a binary-codes index (format 1.3), tiny HEVC ONNX, tiny H.264 LiteRT) and
#      record what the x86 runtime answers
#   3. aarch64 root: debootstrap bookworm arm64 (cached), ARM /proc/cpuinfo, Dockerfile build stage
#      apt packages, runtime stage apt packages
#   4. Dockerfile build stage: venv /opt/edge, `pip wheel annoy` (from source), `pip install
#      .[litert]` (the runtime, no builder extra), compileall, `sha256sum -c` of the models
#   5. prints `uname -m`, Python, and the wheel tags of every distribution in /opt/edge
#   6. the image's runtime, as uid 10001 in a READ-ONLY view of the root, with no builder installed:
#      healthcheck.py, then portable_check.py on the x86-built capsules (full verify, every chunk
#      byte-exact, same top-1 hits, scores within 0.02) -- the capsule format is portable; then
#      `edge install` into a writable store volume at /var/lib/edge-capsules and `edge search NAME`
#   7. test venv /opt/edge-test = the same runtime + the builder extra + pytest (`.[tools,litert,test]`,
#      as scripts/_setup.sh on x86), then `python -m pytest -q`: the SAME default suite as x86. The
#      suite's chunk-embedding cache (tests/conftest.py, $EDGE_TEST_EMBEDDING_CACHE) is first filled
#      by one native x86 run: building test capsules is the desktop's job, and embedding their
#      chunks under QEMU alone took the earlier attempts past 55 minutes. Query embedding, search,
#      frame decoding, QR reading and decryption all run on aarch64.
#
# Why the builder is in the test venv: the default suite builds its capsules with the builder
# (tests/conftest.py), so running the same tests needs it; its extra is pure Python (segno, pypdf,
# beautifulsoup4, tqdm), so it adds no native code beyond what the image has. The image's own venv
# (/opt/edge, step 4) never gets it, and step 6 runs there.
#
# Settings (environment):
#   ARM64_ROOT      rootfs dir (default /var/tmp/edge-arm64root; shared with arm64_env.sh)
#   ARM64_QEMU_CPU  cortex-a72 = Pi 4 (default), cortex-a76 = Pi 5. Not 'max' (slow BLAS, FP warnings).
#   ARM64_WORK      scratch dir for the x86-built capsules (default /var/tmp/edge-arm64-work)
#   ARM64_MIRROR    Debian mirror (default: the first non-security URI in the host's apt sources)
# Needs: root, an x86_64 Debian host, apt + PyPI reachable at install time. No Docker.
#
# The qemu-user + debootstrap route (binfmt F flag, ARM-format /proc/cpuinfo for onnxruntime,
# QEMU_CPU, host CA certificates, mirror discovery) is adapted from the project's shared tool
# ../shared/tools/arm64/arm64_env.sh; it is copied here because CI clones only this repository
# plus ../shared, and this script must keep working if that tool changes.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
R=${ARM64_ROOT:-/var/tmp/edge-arm64root}
RO=${R}-ro
QCPU=${ARM64_QEMU_CPU:-cortex-a72}
WORK=${ARM64_WORK:-/var/tmp/edge-arm64-work}
SUITE=bookworm
RUN_SUITE=1
for arg in "$@"; do
  case "$arg" in
    --no-suite) RUN_SUITE=0 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "test.sh: error: unknown argument $arg" >&2; exit 2 ;;
  esac
done
# The two apt stages of docker/arm64/Dockerfile.
APT_BUILD="python3 python3-venv python3-dev build-essential ca-certificates"
APT_RUNTIME="python3"
EXTRAS=litert   # the Dockerfile's default EDGE_EXTRAS

T_START=$SECONDS
declare -a TIMES=()
log() { printf '[arm64 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
step() { # step NAME CMD... : run, print and remember how long it took
  local name=$1; shift; local t0=$SECONDS
  log "-> $name"; "$@"; local dt=$((SECONDS - t0))
  TIMES+=("$(printf '%5ds  %s' "$dt" "$name")"); log "<- $name: ${dt}s"
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, mounts, chroot)"
[ "$(uname -m)" = x86_64 ] || die "host is $(uname -m); this script emulates aarch64 on x86_64"

# ---------------------------------------------------------------- 1. host
host_setup() {
  local missing=() p bm=/proc/sys/fs/binfmt_misc
  for p in qemu-user-static binfmt-support debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  [ -e $bm/register ] || mount -t binfmt_misc binfmt_misc $bm
  if [ ! -e $bm/qemu-aarch64 ]; then
    update-binfmts --import qemu-aarch64 2>/dev/null || true
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
  fi
  [ -e $bm/qemu-aarch64 ] || die "could not register qemu-aarch64 in binfmt_misc"
  grep -q '^enabled' $bm/qemu-aarch64 || echo 1 > $bm/qemu-aarch64
  # F flag: the interpreter is opened at registration, so it works inside the chroot
  grep -q '^flags:.*F' $bm/qemu-aarch64 || die "qemu-aarch64 binfmt entry lacks the F flag"
}

host_mirror() {
  if [ -n "${ARM64_MIRROR:-}" ]; then echo "$ARM64_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}' | grep -v -- -security | grep -m1 /debian || true)
  [ -n "$m" ] || m=$(grep -h -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v -- -security | grep -m1 /debian || true)
  [ -n "$m" ] || die "no Debian mirror in the host's apt sources; set ARM64_MIRROR"
  echo "$m"
}
host_security_mirror() {
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}'
    grep -h -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } | grep -m1 -- -security || true
}

# ---------------------------------------------------------------- 2. x86_64: capsules built natively
x86_capsules() {
  bash "$REPO/scripts/_setup.sh" >/dev/null 2>&1 || bash "$REPO/scripts/_setup.sh"
  local py="$REPO/.venv/bin/python" out="$WORK/capsules" docs="$REPO/tests/data/docs/good"
  rm -rf "$WORK"; mkdir -p "$out"
  ( cd "$REPO"
    "$py" -m firmware_tools keygen --kind publisher -o "$WORK/publisher.key" >/dev/null
    "$py" -m firmware_tools keygen --kind device -o "$out/device.key" >/dev/null
    cp "$WORK/publisher.pub" "$out/publisher.pub"
    local common=(--signing-key "$WORK/publisher.key" --recipient "$out/device.pub" --expires +30d -q --json)
    "$py" -m firmware_tools build examples/python-faq/docs -o "$out/faq-h264-onnx.capsule" "${common[@]}"
    "$py" -m firmware_tools build examples/python-faq/docs -o "$out/faq-binary-codes.capsule" --index binary-codes \
        "${common[@]}"
    "$py" -m firmware_tools build "$docs" -o "$out/tiny-hevc-onnx.capsule" --codec hevc "${common[@]}"
    "$py" -m firmware_tools build "$docs" -o "$out/tiny-h264-tflite.capsule" --model-family tflite "${common[@]}"
    "$py" docker/arm64/portable_check.py record "$out" "$WORK/expected-x86_64.json" )
  # the device user (uid 10001) must be able to read the key; it stays mode 600
  chown -R 10001:10001 "$out"
  chmod 600 "$out/device.key"
}

# ---------------------------------------------------------------- 3. aarch64 root
is_mounted() { awk -v t="$1" '$2 == t {f=1} END {exit !f}' /proc/self/mounts; }
mounts_under() { awk -v r="$1" 'index($2, r"/") == 1 || $2 == r {print $2}' /proc/self/mounts | sort -r; }
umount_all() {
  local base m
  for base in "$RO" "$R"; do
    for m in $(mounts_under "$base"); do umount "$m" 2>/dev/null || umount -l "$m"; done
  done
}

write_cpuinfo() {
  # qemu-user passes the host's x86 /proc/cpuinfo through; onnxruntime's cpuinfo library then
  # segfaults at import. Give the guest an ARM one (Cortex-A72 as on a Pi 4, or A76 as on a Pi 5).
  local f=$R/opt/qemu/cpuinfo part=0xd08 var=0 rev=3 i
  if [ "$QCPU" = cortex-a76 ]; then part=0xd0b; var=4; rev=1; fi
  mkdir -p "$R/opt/qemu"; : > "$f.new"
  for i in $(seq 0 $(( $(nproc) - 1 ))); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x%s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
      "$i" "$var" "$part" "$rev" >> "$f.new"
  done
  printf 'Model\t\t: emulated aarch64 (qemu-user, %s)\n' "$QCPU" >> "$f.new"
  cmp -s "$f" "$f.new" 2>/dev/null || cat "$f.new" > "$f"   # in place: a bind mount pins the inode
  rm -f "$f.new"
}

mount_root() {
  is_mounted "$R/proc"    || mount -t proc proc "$R/proc"
  is_mounted "$R/sys"     || mount -t sysfs sysfs "$R/sys"
  is_mounted "$R/dev"     || mount --bind /dev "$R/dev"
  is_mounted "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts"
  write_cpuinfo
  if is_mounted "$R/proc/cpuinfo" && ! cmp -s "$R/proc/cpuinfo" "$R/opt/qemu/cpuinfo"; then umount "$R/proc/cpuinfo"; fi
  is_mounted "$R/proc/cpuinfo" || mount --bind "$R/opt/qemu/cpuinfo" "$R/proc/cpuinfo"
  cp -L /etc/resolv.conf "$R/etc/resolv.conf"
}

# in_root ROOT CMD...: run CMD in the aarch64 root with a clean environment
in_root() {
  local root=$1; shift
  QEMU_CPU=$QCPU chroot "$root" /usr/bin/env -i \
    QEMU_CPU="$QCPU" HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" DEBIAN_FRONTEND=noninteractive \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
    PIP_ROOT_USER_ACTION=ignore "$@"
}

aarch64_root() {
  if [ ! -f "$R/.arm64env-debootstrap-ok" ]; then
    if [ -e "$R" ]; then umount_all; rm -rf --one-file-system "$R"; fi
    mkdir -p "$(dirname "$R")"
    debootstrap --arch=arm64 --variant=minbase "$SUITE" "$R" "$(host_mirror)" >/dev/null
    touch "$R/.arm64env-debootstrap-ok"
  fi
  mount_root
  local mirror sec want
  mirror=$(host_mirror); sec=$(host_security_mirror)
  want="deb $mirror $SUITE main
deb $mirror $SUITE-updates main"
  [ -n "$sec" ] && want="$want
deb $sec $SUITE-security main"
  [ "$(cat "$R/etc/apt/sources.list" 2>/dev/null)" = "$want" ] || echo "$want" > "$R/etc/apt/sources.list"
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then  # e.g. a TLS-intercepting proxy
    mkdir -p "$R/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
  fi
  # shellcheck disable=SC2086
  in_root "$R" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $APT_BUILD $APT_RUNTIME >/dev/null && apt-get clean"
  in_root "$R" update-ca-certificates >/dev/null 2>&1 || true
  in_root "$R" sh -c 'getent group 10001 >/dev/null || groupadd --system --gid 10001 edge; id -u 10001 >/dev/null 2>&1 || useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin edge'
  in_root "$R" install -d -o 10001 -g 10001 -m 755 /var/lib/edge-capsules  # the Dockerfile's store mount point
}

# ---------------------------------------------------------------- 4. Dockerfile build stage
image_install() {
  rm -rf "$R/src" "$R/opt/edge" "$R/opt/edge-test"; mkdir -p "$R/src"
  # the working tree as the Dockerfile's COPY sees it (tracked + untracked, not ignored)
  ( cd "$REPO" && git ls-files -z -co --exclude-standard | xargs -0 tar -cf - ) | tar -xf - -C "$R/src"
  in_root "$R" python3 -m venv /opt/edge
  in_root "$R" /opt/edge/bin/pip install -q --upgrade pip setuptools wheel
  [ -n "$(ls "$R"/wheels/annoy-*.whl 2>/dev/null)" ] \
    || in_root "$R" /opt/edge/bin/pip wheel -q --no-deps --wheel-dir /wheels "annoy>=1.17,<1.18"
  in_root "$R" /opt/edge/bin/pip install -q --find-links /wheels "/src[$EXTRAS]"
  in_root "$R" /opt/edge/bin/python -m compileall -q /opt/edge/lib
  in_root "$R" sh -c 'cd /opt/edge/share/edge-capsules/models/all-MiniLM-L6-v2 && sha256sum -c SHA256SUMS'
  cp "$REPO/docker/arm64/healthcheck.py" "$R/opt/edge/healthcheck.py"
  rm -rf "$R/src/build" "$R/src"/*.egg-info
}

# ---------------------------------------------------------------- 5. platform and wheel tags
show_platform() {
  in_root "$R" /opt/edge/bin/python - <<'PY'
import importlib.metadata as md, os, platform
print(f"uname -m: {os.uname().machine}   python: {platform.python_version()}   libc: {' '.join(platform.libc_ver())}")
print("installed distributions in /opt/edge (the image's runtime venv) and their wheel tags:")
for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(": ", 1)[1] for line in wheel.splitlines() if line.startswith("Tag: ")]
    print(f"  {dist.metadata['Name']:<26} {dist.version:<14} {', '.join(tags) or '(no WHEEL file)'}")
PY
}

# ---------------------------------------------------------------- 6. the image's runtime, read-only, uid 10001
runtime_checks() {
  mkdir -p "$R/capsules" "$RO"
  is_mounted "$R/capsules" || mount --bind "$WORK/capsules" "$R/capsules"
  mount -o remount,bind,ro "$R/capsules"
  cp "$WORK/expected-x86_64.json" "$R/opt/expected-x86_64.json"
  cp "$REPO/docker/arm64/portable_check.py" "$R/opt/portable_check.py"
  is_mounted "$RO" || { mount --rbind "$R" "$RO"; mount --make-rslave "$RO"; mount -o remount,bind,ro "$RO"; }
  if touch "$RO/.rw-probe" 2>/dev/null; then rm -f "$RO/.rw-probe"; die "$RO is not read-only"; fi
  # what `docker run --read-only` still gives a container: a tmpfs at /dev/shm (no /tmp)
  mkdir -p "$R/dev/shm" 2>/dev/null || true
  is_mounted "$RO/dev/shm" || mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev shm "$RO/dev/shm"
  local as_device=(setpriv --reuid 10001 --regid 10001 --clear-groups --inh-caps=-all --bounding-set=-all
                   env HOME=/nonexistent PYTHONDONTWRITEBYTECODE=1 PATH=/opt/edge/bin:/usr/bin:/bin
                   EDGE_MODEL_PATH=/opt/edge/share/edge-capsules/models ORT_DISABLE_TELEMETRY=1)
  log "runtime checks as uid $(in_root "$RO" "${as_device[@]}" id -u) in a read-only root ($RO)"
  in_root "$RO" "${as_device[@]}" python /opt/edge/healthcheck.py
  in_root "$RO" "${as_device[@]}" python /opt/portable_check.py check /capsules /opt/expected-x86_64.json
  in_root "$RO" "${as_device[@]}" edge info /capsules/tiny-hevc-onnx.capsule --trust /capsules/publisher.pub \
    --identity /capsules/device.key --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("edge info (aarch64):", json.dumps({k: d[k] for k in ("decoder", "decoder_is_hardware", "embedder")}))'
  in_root "$RO" "${as_device[@]}" edge search /capsules/faq-h264-onnx.capsule "How do I copy a file?" -k 1 \
    --trust /capsules/publisher.pub --identity /capsules/device.key | sed -n 1,4p
  # A device store on a writable volume (as docker/arm64/README.md runs it), the root still read-only:
  # install verifies every frame, then search by name.
  local store="$WORK/store-volume"
  rm -rf "$store"; install -d -o 10001 -g 10001 "$store"
  mount --bind "$store" "$RO/var/lib/edge-capsules"
  local keys=(--trust /capsules/publisher.pub --identity /capsules/device.key)
  in_root "$RO" "${as_device[@]}" EDGE_STORE_DIR=/var/lib/edge-capsules edge install /capsules/faq-h264-onnx.capsule "${keys[@]}"
  in_root "$RO" "${as_device[@]}" EDGE_STORE_DIR=/var/lib/edge-capsules edge search faq-h264-onnx "How do I copy a file?" -k 1 \
    "${keys[@]}" | sed -n 1,2p
  umount "$RO/var/lib/edge-capsules"
  umount -R "$RO"
  umount "$R/capsules"
}

# ---------------------------------------------------------------- 7. the default suite
test_suite() {
  in_root "$R" python3 -m venv /opt/edge-test
  in_root "$R" /opt/edge-test/bin/pip install -q --upgrade pip
  in_root "$R" /opt/edge-test/bin/pip install -q --find-links /wheels -e "/src[tools,$EXTRAS,test]"
  # The builder's chunk embeddings come from a native x86 run of the same suite (a desktop job;
  # 100x slower under QEMU); everything the runtime computes runs on aarch64.
  if [ ! -s "$WORK/test-embeddings.sqlite" ]; then
    log "x86_64: filling the chunk-embedding cache with one native run of the suite"
    [ -x "$REPO/.venv/bin/python" ] || bash "$REPO/scripts/_setup.sh" >&2
    (cd "$REPO" && EDGE_TEST_EMBEDDING_CACHE="$WORK/test-embeddings.sqlite" "$REPO/.venv/bin/python" -m pytest -q -x \
        -p no:cacheprovider >&2)
  fi
  cp "$WORK/test-embeddings.sqlite" "$R/opt/test-embeddings.sqlite"
  in_root "$R" sh -c 'cd /src && EDGE_TEST_EMBEDDING_CACHE=/opt/test-embeddings.sqlite \
      exec /opt/edge-test/bin/python -m pytest -q -rs -p no:cacheprovider --durations=15'
}

trap 'umount_all' EXIT
step "1 host: qemu-user-static, binfmt_misc, debootstrap" host_setup
step "2 x86_64: build capsules natively and record the x86 answers" x86_capsules
step "3 aarch64 root: debootstrap $SUITE arm64, apt ($APT_BUILD $APT_RUNTIME)" aarch64_root
step "4 Dockerfile build stage: venv, annoy wheel, pip install .[$EXTRAS]" image_install
step "5 platform and wheel tags" show_platform
step "6 runtime only, read-only root, uid 10001: health check, x86-built capsules" runtime_checks
if [ "$RUN_SUITE" = 1 ]; then
  step "7 default test suite (pytest -q) under QEMU_CPU=$QCPU" test_suite
fi
log "durations:"
printf '%s\n' "${TIMES[@]}" >&2
log "total: $((SECONDS - T_START))s"
