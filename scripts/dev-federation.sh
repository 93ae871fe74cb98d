#!/usr/bin/env bash
# The guided demo (`brobygger demo`) in certs/dev/ instead of a temporary directory: a fresh
# development federation every time (Herning Kommune, Fredericia Kommune, Red Barnet on
# loopback, SQLite), the story of one made-up family, then the nodes keep running for the
# printed curl commands until Ctrl-C. Extra arguments go to the demo, e.g. --exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# New keys, a new manifest and empty databases every time.
rm -rf certs/dev
exec cargo run --release -- demo --dir certs/dev "$@"
