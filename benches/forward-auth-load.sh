#!/usr/bin/env bash
# Forward-auth throughput: nginx + auth_request asking otpgate, against nginx + auth_request
# asking a trivial endpoint (nginx `return 204`), in one run.
#
# Both front proxies are nginx running the README's config (config/examples/forward-auth/
# nginx.conf, addresses changed), pinned to the same CPU (PROXY_CPU), in front of the same
# upstream (an nginx answering a small body). They differ only in who answers the auth
# subrequest: otpgate (a `mode: forward_auth` app, a session cookie made with `otpgate
# mint-cookie`), or an nginx `location = /.otpgate/auth { return 204; }`. Both auth services
# run on AUTH_CPU; wrk and the upstream on LOAD_CPU. The two are measured alternately, ROUNDS
# times each, with the same cookie header. Printed per run and as medians: requests/s and p99
# latency. The last line is ratio_rps= (otpgate / trivial endpoint).
#
# Requires: nginx, wrk, taskset (Debian: nginx wrk util-linux).
#
#   benches/forward-auth-load.sh                       # 3 rounds x 10 s, 64 connections
#   ROUNDS=2 DURATION=5 benches/forward-auth-load.sh
#   PROXY_CPU=0 AUTH_CPU=1 LOAD_CPU=2 benches/forward-auth-load.sh
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
AUTH_CPU=${AUTH_CPU:-$LOAD_CPU}
BASE_PORT=${BASE_PORT:-18950}

root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}
EXAMPLE=$root/config/examples/forward-auth/nginx.conf

for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "forward-auth-load: $tool is required (apt-get install nginx wrk util-linux)" >&2; exit 2; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin otpgate)
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP=$BASE_PORT TRIVIAL=$((BASE_PORT + 1)) OTP=$((BASE_PORT + 2)) ADMIN=$((BASE_PORT + 3))
FRONT_OTPGATE=$((BASE_PORT + 4)) FRONT_TRIVIAL=$((BASE_PORT + 5))
mkdir -p "$work/tmp" "$work/data"

# One nginx process each (no master), as root without switching users; no access logs.
nginx_conf() { # name body -> file
  cat > "$work/$1.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $work/$1.pid; error_log $work/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 10000000;
  client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
$2
}
EOF
}
nginx_conf upstream "  server { listen 127.0.0.1:$UP; location / { return 200 \"hello from the upstream\n\"; } }"
nginx_conf trivial "  server { listen 127.0.0.1:$TRIVIAL; location = /.otpgate/auth { return 204; } }"
front() { # name auth_port listen_port -> the README's config, addresses changed
  sed -e "s/listen 80;/listen 127.0.0.1:$3;/" \
      -e "s/server 127.0.0.1:8080;/server 127.0.0.1:$2;/" \
      -e "s/server 127.0.0.1:3000;/server 127.0.0.1:$UP;/" \
      -e "s/keepalive 32;/keepalive 256;/" "$EXAMPLE" > "$work/$1-site.conf"
  nginx_conf "$1" "  include $work/$1-site.conf;"
}
front front_otpgate "$OTP" "$FRONT_OTPGATE"
front front_trivial "$TRIVIAL" "$FRONT_TRIVIAL"

cat > "$work/otpgate.yaml" <<EOF
version: 1
listen: { http: 127.0.0.1:$OTP, admin: 127.0.0.1:$ADMIN }
data_dir: $work/data
log: { level: warn, access: false }
trusted_proxies: [127.0.0.1/32]
apps:
  - name: bench
    mode: forward_auth
    hosts: [app.example.test]
    public_url: http://app.example.test:$FRONT_OTPGATE
    policies: [ { name: staff, action: allow, include: [ { email_domain: bench.test } ] } ]
EOF

taskset -c "$LOAD_CPU" nginx -c "$work/upstream.conf" -e "$work/upstream-error.log" & pids+=($!)
taskset -c "$AUTH_CPU" nginx -c "$work/trivial.conf" -e "$work/trivial-error.log" & pids+=($!)
taskset -c "$AUTH_CPU" "$OTPGATE" --config "$work/otpgate.yaml" > "$work/otpgate.log" 2>&1 & pids+=($!)
for f in front_otpgate front_trivial; do
  taskset -c "$PROXY_CPU" nginx -c "$work/$f.conf" -e "$work/$f-error.log" & pids+=($!)
done

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "forward-auth-load: nothing listens on port $1" >&2; cat "$work"/*.log >&2 || true; exit 1
}
for p in "$UP" "$TRIVIAL" "$OTP" "$FRONT_OTPGATE" "$FRONT_TRIVIAL"; do wait_port "$p"; done

port_of() { case "$1" in otpgate) echo "$FRONT_OTPGATE" ;; trivial) echo "$FRONT_TRIVIAL" ;; esac; }

# wrk's latency figures come with units; convert to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

run() { # auth seconds -> "rps p99_ms"
  local auth=$1 secs=$2 cookie out
  # A fresh session for every run: otpgate refreshes a cookie older than a minute on every
  # request that carries it, and wrk never stores the refreshed one.
  cookie=$("$OTPGATE" --config "$work/otpgate.yaml" mint-cookie --app bench --email load@bench.test --ttl 1h)
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency \
    -H "Host: app.example.test" -H "Cookie: $cookie" "http://127.0.0.1:$(port_of "$auth")/")
  if echo "$out" | grep -q "Non-2xx"; then
    echo "forward-auth-load: $auth answered non-2xx responses:" >&2; echo "$out" >&2; exit 1
  fi
  echo "$(echo "$out" | awk '/^Requests\/sec:/ {printf "%.0f", $2}') $(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
}

echo "forward-auth-load: rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS proxy_cpu=$PROXY_CPU auth_cpu=$AUTH_CPU load_cpu=$LOAD_CPU"
for auth in otpgate trivial; do run "$auth" "$WARMUP" > /dev/null; done

printf '%-6s %-8s %10s %9s\n' round auth rps p99_ms
: > "$work/results"
for round in $(seq "$ROUNDS"); do
  for auth in otpgate trivial; do
    read -r rps p99 < <(run "$auth" "$DURATION")
    printf '%-6s %-8s %10s %9s\n' "$round" "$auth" "$rps" "$p99"
    echo "$auth $rps $p99" >> "$work/results"
  done
done

median() { # auth column
  awk -v a="$1" -v c="$2" '$1 == a {print $c}' "$work/results" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
for auth in otpgate trivial; do
  echo "median $auth rps=$(median "$auth" 2) p99_ms=$(median "$auth" 3)"
done
awk -v a="$(median otpgate 3)" -v b="$(median trivial 3)" 'BEGIN { printf "ratio_p99=%.3f\n", a / b }'
awk -v a="$(median otpgate 2)" -v b="$(median trivial 2)" 'BEGIN { printf "ratio_rps=%.3f\n", a / b }'
