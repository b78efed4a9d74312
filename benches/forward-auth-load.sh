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
# times each, with the same cookie header; the trivial endpoint sends the same identity headers
# otpgate does, so the front nginx's work is the same. Printed per run and as medians:
# requests/s, p99 latency, and CPU time per request of the auth service and of the front nginx
# (from /proc). The last line is ratio_rps= (otpgate / trivial endpoint).
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
# The trivial endpoint answers what otpgate answers (the identity headers), so the front nginx
# does the same work with both and the difference is the auth service alone.
nginx_conf trivial "  server { listen 127.0.0.1:$TRIVIAL; location = /.otpgate/auth {
    add_header X-Otpgate-Email load@bench.test; add_header X-Otpgate-User load@bench.test;
    add_header X-Otpgate-Groups \"\"; return 204; } }"
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
trivial_pid=$!
taskset -c "$AUTH_CPU" "$OTPGATE" --config "$work/otpgate.yaml" > "$work/otpgate.log" 2>&1 & pids+=($!)
otpgate_pid=$!
taskset -c "$PROXY_CPU" nginx -c "$work/front_otpgate.conf" -e "$work/front_otpgate-error.log" & pids+=($!)
front_otpgate_pid=$!
taskset -c "$PROXY_CPU" nginx -c "$work/front_trivial.conf" -e "$work/front_trivial-error.log" & pids+=($!)
front_trivial_pid=$!

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "forward-auth-load: nothing listens on port $1" >&2; cat "$work"/*.log >&2 || true; exit 1
}
for p in "$UP" "$TRIVIAL" "$OTP" "$FRONT_OTPGATE" "$FRONT_TRIVIAL"; do wait_port "$p"; done

port_of() { case "$1" in otpgate) echo "$FRONT_OTPGATE" ;; trivial) echo "$FRONT_TRIVIAL" ;; esac; }
# The auth service's and the front nginx's processes for each variant.
auth_pid() { case "$1" in otpgate) echo "$otpgate_pid" ;; trivial) echo "$trivial_pid" ;; esac; }
front_pid() { case "$1" in otpgate) echo "$front_otpgate_pid" ;; trivial) echo "$front_trivial_pid" ;; esac; }
# CPU ticks (user + system) of a process, all threads.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# wrk's latency figures come with units; convert to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

run() { # auth seconds -> "rps p99_ms auth_cpu_us_per_req front_cpu_us_per_req"
  local auth=$1 secs=$2 cookie out a0 a1 f0 f1 rps p99 reqs
  # A fresh session for every run: otpgate refreshes a cookie older than a minute on every
  # request that carries it, and wrk never stores the refreshed one.
  cookie=$("$OTPGATE" --config "$work/otpgate.yaml" mint-cookie --app bench --email load@bench.test --ttl 1h)
  a0=$(ticks "$(auth_pid "$auth")"); f0=$(ticks "$(front_pid "$auth")")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency \
    -H "Host: app.example.test" -H "Cookie: $cookie" "http://127.0.0.1:$(port_of "$auth")/")
  a1=$(ticks "$(auth_pid "$auth")"); f1=$(ticks "$(front_pid "$auth")")
  if echo "$out" | grep -q "Non-2xx"; then
    echo "forward-auth-load: $auth answered non-2xx responses:" >&2; echo "$out" >&2; exit 1
  fi
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v r="$rps" -v p="$p99" -v a=$((a1 - a0)) -v f=$((f1 - f0)) -v n="$reqs" -v hz="$hz" \
    'BEGIN { printf "%.0f %.3f %.2f %.2f\n", r, p, a / hz * 1e6 / n, f / hz * 1e6 / n }'
}

echo "forward-auth-load: rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS proxy_cpu=$PROXY_CPU auth_cpu=$AUTH_CPU load_cpu=$LOAD_CPU"
for auth in otpgate trivial; do run "$auth" "$WARMUP" > /dev/null; done

printf '%-6s %-8s %10s %9s %12s %13s\n' round auth rps p99_ms auth_us_req front_us_req
: > "$work/results"
for round in $(seq "$ROUNDS"); do
  for auth in otpgate trivial; do
    read -r rps p99 acpu fcpu < <(run "$auth" "$DURATION")
    printf '%-6s %-8s %10s %9s %12s %13s\n' "$round" "$auth" "$rps" "$p99" "$acpu" "$fcpu"
    echo "$auth $rps $p99 $acpu $fcpu" >> "$work/results"
  done
done

median() { # auth column
  awk -v a="$1" -v c="$2" '$1 == a {print $c}' "$work/results" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
for auth in otpgate trivial; do
  echo "median $auth rps=$(median "$auth" 2) p99_ms=$(median "$auth" 3) auth_cpu_us_per_req=$(median "$auth" 4) front_cpu_us_per_req=$(median "$auth" 5)"
done
awk -v a="$(median otpgate 3)" -v b="$(median trivial 3)" 'BEGIN { printf "ratio_p99=%.3f\n", a / b }'
awk -v a="$(median otpgate 2)" -v b="$(median trivial 2)" 'BEGIN { printf "ratio_rps=%.3f\n", a / b }'
