#!/usr/bin/env bash
# Installs everything Sluice needs to build and test on Debian 12, with apt-get.
# --test adds what the tests use, --bench also what the benchmarks use (perf).
# Idempotent: when every package is already installed it only runs dpkg-query and exits.
set -euo pipefail

BUILD_PACKAGES=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  liburing-dev libabsl-dev libmimalloc-dev libbenchmark-dev libgtest-dev libgmock-dev
  libc-ares-dev libssl-dev libtomlplusplus-dev
)
TEST_PACKAGES=(
  swaks postfix python3 python3-aiosmtpd python3-dnslib haproxy dnsmasq-base
  iproute2 procps curl time hyperfine fuse3 python3-pyfuse3
)
# The benchmarks' profiles (bench/relay.py --perf) need perf on top of the test packages.
BENCH_PACKAGES=(linux-perf)

want=("${BUILD_PACKAGES[@]}")
case "${1:-}" in
  --test) want+=("${TEST_PACKAGES[@]}") ;;
  --bench) want+=("${TEST_PACKAGES[@]}" "${BENCH_PACKAGES[@]}") ;;
esac

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
# Postfix must not become a system MTA: "No configuration" leaves it installed but unconfigured.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
