#!/usr/bin/env bash
# The load benchmark in one run: installs nginx if missing, builds the release
# relay and the benchmark, and runs it. Extra arguments go to the benchmark
# (e.g. --smoke, --seconds 5, --no-postgres). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >/dev/null ||
      echo "!!! nginx could not be installed: the run has no ceiling to compare with !!!"
  else
    echo "!!! nginx is not installed (apt-get install nginx): the run has no ceiling to compare with !!!"
  fi
fi
cargo build --release --locked -p accelerate-relay -p accelerate-relay-bench
exec ./target/release/accelerate-relay-bench "$@"
