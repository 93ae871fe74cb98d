#!/usr/bin/env bash
# Starts a development federation on loopback: Herning Kommune, Fredericia Kommune and
# Red Barnet, from a fresh `brobygger pki init`, with SQLite databases. Ctrl-C stops all three.
# This is the README's first command until `brobygger demo` lands.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "Building brobygger (the first build takes about 5 minutes on 2 cores)..."
cargo build --bin brobygger
bin="${CARGO_TARGET_DIR:-target}/debug/brobygger"
dir=certs/dev
orgs=(herning-kommune fredericia-kommune red-barnet)

# A fresh federation every time: new keys, new manifest, empty databases.
rm -rf "$dir"
"$bin" pki init --dir "$dir" --federation brobygger.test \
  --org herning-kommune:municipality --org fredericia-kommune:municipality --org red-barnet:ngo

pids=()
cleanup() {
  echo
  echo "Stopping the nodes..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap cleanup EXIT INT TERM

for org in "${orgs[@]}"; do
  "$bin" serve --config "$dir/$org.toml" &
  pids+=("$!")
done

# Wait until every node answers /readyz (a condition with a deadline, not a fixed sleep).
for port in 7201 7202 7203; do
  for _ in $(seq 1 300); do
    if curl -sf --cacert "$dir/federation/ca.pem" "https://127.0.0.1:$port/readyz" >/dev/null; then
      break
    fi
    sleep 0.1
  done
done

token=$("$bin" token --config "$dir/herning-kommune.toml" --role admin --sub dev-admin)
echo
echo "Herning Kommune pings Red Barnet over mutual TLS:"
curl -s --cacert "$dir/federation/ca.pem" -H "Authorization: Bearer $token" \
  -X POST https://127.0.0.1:7201/api/v1/peers/red-barnet/ping
echo
cat <<INFO

Three nodes are running (data in $dir/data/, logs on this terminal):
  herning-kommune     federation https://127.0.0.1:7101   local API https://127.0.0.1:7201
  fredericia-kommune  federation https://127.0.0.1:7102   local API https://127.0.0.1:7202
  red-barnet          federation https://127.0.0.1:7103   local API https://127.0.0.1:7203

Try:
  TOKEN=\$($bin token --config $dir/red-barnet.toml --role admin --sub me)
  curl --cacert $dir/federation/ca.pem -H "Authorization: Bearer \$TOKEN" -X POST https://127.0.0.1:7203/api/v1/peers/fredericia-kommune/ping
  curl --cacert $dir/federation/ca.pem https://127.0.0.1:7203/readyz

Press Ctrl-C to stop.
INFO
wait
