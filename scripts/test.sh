#!/usr/bin/env bash
# The test command (README, second command; CI runs the same): makes sure what the tests need is
# there, then runs `cargo test`.
#
# The tests need a PostgreSQL server (they use the one on 127.0.0.1:5432 if it answers, else they
# start a throwaway one from the PostgreSQL binaries), headless Chromium (the family's
# transparency page is tested in a real browser) and jq (the guides' curl examples use it).
# Missing Debian packages are installed when this runs as root; otherwise it says what to run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v chromium >/dev/null 2>&1 || need_packages+=(chromium)
command -v jq >/dev/null 2>&1 || need_packages+=(jq)
if [ "${#need_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need_packages[*]} (Debian packages) for the tests"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}"
  else
    echo "The tests need: ${need_packages[*]}. Install them (Debian: sudo apt-get install ${need_packages[*]}) and run this again." >&2
    exit 1
  fi
fi

if [ -z "${BROBYGGER_TEST_POSTGRES_URL:-}" ]; then
  if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q &&
    [ -d /etc/postgresql ] && [ "$(id -u)" -eq 0 ]; then
    echo "== PostgreSQL on 127.0.0.1:5432 is down; starting it"
    # pg_ctlcluster can report a failure while the server does come up; the wait decides.
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
    deadline=$((SECONDS + 60))
    until pg_isready -h 127.0.0.1 -p 5432 -q || [ "$SECONDS" -ge "$deadline" ]; do
      sleep 0.5
    done
  fi
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q; then
    export BROBYGGER_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"
  fi
  # Otherwise the tests start a throwaway PostgreSQL cluster from the binaries themselves.
fi

exec cargo test "$@"
