#!/usr/bin/env bash
# Proxy throughput: otpgate against nginx as a plain reverse proxy, in one run.
#
# Both proxies sit in front of the same upstream (an nginx answering a small body), are pinned
# to the same CPU (PROXY_CPU), get the same wrk load from another CPU (LOAD_CPU, shared with the
# upstream), and are measured alternately, ROUNDS times each. nginx runs one worker with
# upstream keep-alive and sets the same forwarding headers otpgate sets; neither writes access
# logs. Printed per run and as medians: requests/s, p99 latency, CPU time per request (from
# /proc), CPU use of the proxy's core. The last line is ratio_rps= (otpgate / nginx).
#
# ROUTE=protected puts otpgate's app behind an allow policy and sends a session cookie made with
# `otpgate mint-cookie`; nginx is then also measured with `auth_request` (one subrequest per
# request to an auth endpoint on the upstream, the usual forward-auth deployment), reported as
# nginx_auth with its own ratio.
# ROUTE=token sends a service token (made with `otpgate service-token create`) to a service_auth
# policy instead.
#
# RATE=5000 drives each proxy at that fixed rate instead of as fast as it goes (h2load --rps
# spread over the connections, per-request times from its log): the p99 column is then the
# latency at a load both proxies carry, and rps shows the rate reached. h2load sends a
# connection's next request only after its previous answer, so a stall delays what follows
# instead of being counted against it (unlike wrk2); compare runs of the same script only.
#
# Requires: nginx, wrk, taskset (Debian: nginx wrk util-linux); with RATE, h2load (nghttp2-client).
#
#   benches/proxy-load.sh                      # 3 rounds x 10 s, 64 connections
#   ROUNDS=5 DURATION=20 CONNECTIONS=128 benches/proxy-load.sh
#   ROUTE=protected benches/proxy-load.sh      # otpgate with a session cookie (mint-cookie)
#   ROUTE=token benches/proxy-load.sh          # otpgate with a service token (service_auth)
#   BACKENDS=shared ROUTE=protected benches/proxy-load.sh   # state on Redis, credentials on
#                                              # PostgreSQL (throwaway servers, benches/backends.sh)
#   EXTRA_CONFIG='identity_assertion: { enabled: false }' ROUTE=protected benches/proxy-load.sh
#   RATE=5000 ROUTE=protected benches/proxy-load.sh   # p99 at a fixed 5,000 requests/s
#   RUNTIME=per_core benches/proxy-load.sh     # otpgate with limits.runtime: per_core
#   BOTH_RUNTIMES=1 benches/proxy-load.sh      # also a second otpgate with the other runtime
#                                              # (otpgate_alt), alternating in the same rounds
#   ALT_BINARY=/old/otpgate benches/proxy-load.sh   # otpgate_alt is another build (same config),
#                                              # for a before/after in one run
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ROUTE=${ROUTE:-bypass}
BACKENDS=${BACKENDS:-embedded}   # embedded | shared (Redis + PostgreSQL)
EXTRA_CONFIG=${EXTRA_CONFIG:-}   # more top-level YAML for otpgate's config
BASE_PORT=${BASE_PORT:-18900}
RATE=${RATE:-}
RUNTIME=${RUNTIME:-multi_thread}   # otpgate's limits.runtime: multi_thread | per_core
BOTH_RUNTIMES=${BOTH_RUNTIMES:-}   # non-empty: otpgate_alt runs the other runtime
ALT_BINARY=${ALT_BINARY:-}       # a binary: otpgate_alt runs it

root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}

for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "proxy-load: $tool is required (apt-get install nginx wrk util-linux)" >&2; exit 2; }
done
if [ -n "$RATE" ]; then
  command -v h2load >/dev/null || { echo "proxy-load: RATE needs h2load (apt-get install nghttp2-client)" >&2; exit 2; }
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin otpgate)
fi

work=$(mktemp -d)
pids=()
# shellcheck source=benches/backends.sh
. "$root/benches/backends.sh"
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_backends
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP=$BASE_PORT NGX=$((BASE_PORT + 1)) OTP=$((BASE_PORT + 2)) ADMIN=$((BASE_PORT + 3)) NGX_AUTH=$((BASE_PORT + 4))
ALT=$((BASE_PORT + 5)) ALT_ADMIN=$((BASE_PORT + 6))
mkdir -p "$work/tmp" "$work/data"

nginx_common="daemon off; error_log $work/nginx-error.log warn;"
temp_paths="client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;"

cat > "$work/upstream.conf" <<EOF
worker_processes 1; $nginx_common pid $work/upstream.pid;
events { worker_connections 4096; }
http {
  access_log off; $temp_paths
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$UP;
    location / { return 200 "hello from the upstream\n"; }
    location = /auth { return 204; }
  }
}
EOF

cat > "$work/proxy.conf" <<EOF
worker_processes 1; $nginx_common pid $work/proxy.pid;
events { worker_connections 4096; }
http {
  access_log off; $temp_paths
  keepalive_requests 10000000;
  upstream app { server 127.0.0.1:$UP; keepalive 256; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$proxy_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header Forwarded "for=\$remote_addr;host=\"\$http_host\";proto=\$scheme";
    }
  }
  server {
    listen 127.0.0.1:$NGX_AUTH;
    location = /auth {
      internal;
      proxy_pass http://app/auth;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri;
    }
    location / {
      auth_request /auth;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$proxy_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header Forwarded "for=\$remote_addr;host=\"\$http_host\";proto=\$scheme";
    }
  }
}
EOF

case "$ROUTE" in
  bypass) policy='{ name: open, action: bypass }' ;;
  protected) policy='{ name: staff, action: allow, include: [ { email_domain: bench.test } ] }' ;;
  token) policy='{ name: machines, action: service_auth, include: [ { service_token: bench } ] }' ;;
  *) echo "proxy-load: ROUTE must be bypass, protected or token" >&2; exit 2 ;;
esac
cat > "$work/otpgate.yaml" <<EOF
version: 1
listen: { http: 127.0.0.1:$OTP, admin: 127.0.0.1:$ADMIN }
data_dir: $work/data
log: { level: warn, access: false }
limits: { runtime: $RUNTIME }
apps:
  - name: bench
    hosts: [127.0.0.1]
    public_url: http://127.0.0.1:$OTP
    upstream: http://127.0.0.1:$UP
    policies: [ $policy ]
EOF
if [ "$BACKENDS" = shared ]; then
  start_backends "$work" $((BASE_PORT + 10)) "$LOAD_CPU"
  printf '%s\n' "$BACKEND_CONFIG" >> "$work/otpgate.yaml"
fi
if [ -n "$EXTRA_CONFIG" ]; then printf '%s\n' "$EXTRA_CONFIG" >> "$work/otpgate.yaml"; fi

if [ "$ROUTE" = token ]; then
  # The token's entry and key come from `otpgate service-token create`, run on a config that
  # does not name it yet.
  sed 's/policies: .*/policies: [ { name: open, action: bypass } ]/' "$work/otpgate.yaml" > "$work/pre.yaml"
  token=$("$OTPGATE" --config "$work/pre.yaml" service-token create bench 2>&1)
  { echo "service_tokens:"; echo "$token" | sed -n '/^  - name/,$p'; } >> "$work/otpgate.yaml"
fi

taskset -c "$LOAD_CPU" nginx -c "$work/upstream.conf" & pids+=($!)
taskset -c "$PROXY_CPU" nginx -c "$work/proxy.conf" & pids+=($!)
nginx_master=$!
taskset -c "$PROXY_CPU" "$OTPGATE" --config "$work/otpgate.yaml" > "$work/otpgate.log" 2>&1 & pids+=($!)
otpgate_pid=$!

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "proxy-load: nothing listens on port $1" >&2; cat "$work"/*.log >&2 || true; exit 1
}
wait_port "$UP"; wait_port "$NGX"; wait_port "$OTP"; wait_port "$NGX_AUTH"
alt_pid=
other=$RUNTIME
if [ -n "$BOTH_RUNTIMES" ] || [ -n "$ALT_BINARY" ]; then
  # The same config (and data directory, so the same keys: started once the first has
  # written them) on other ports, with the other runtime (BOTH_RUNTIMES) or binary (ALT_BINARY).
  if [ -n "$BOTH_RUNTIMES" ]; then
    other=per_core; [ "$RUNTIME" = per_core ] && other=multi_thread
  fi
  sed -e "s/runtime: $RUNTIME/runtime: $other/" -e "s/127.0.0.1:$OTP,/127.0.0.1:$ALT,/" \
    -e "s/127.0.0.1:$ADMIN }/127.0.0.1:$ALT_ADMIN }/" -e "s|public_url: http://127.0.0.1:$OTP|public_url: http://127.0.0.1:$ALT|" \
    "$work/otpgate.yaml" > "$work/alt.yaml"
  taskset -c "$PROXY_CPU" "${ALT_BINARY:-$OTPGATE}" --config "$work/alt.yaml" > "$work/alt.log" 2>&1 & pids+=($!)
  alt_pid=$!
fi
if [ -n "$alt_pid" ]; then wait_port "$ALT"; fi

proxies=(nginx otpgate)
otpgate_headers=()
if [ "$ROUTE" = protected ]; then
  proxies=(nginx nginx_auth otpgate)
  cookie=$("$OTPGATE" --config "$work/otpgate.yaml" mint-cookie --app bench --email load@bench.test --ttl 1h)
  otpgate_headers=(-H "Cookie: $cookie")
elif [ "$ROUTE" = token ]; then
  otpgate_headers=(-H "$(echo "$token" | grep '^Otpgate-Client-Id')" -H "$(echo "$token" | grep '^Otpgate-Client-Secret')")
fi
if [ -n "$alt_pid" ]; then proxies+=(otpgate_alt); fi

# CPU ticks (user + system) of a process and its children's threads.
ticks() {
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
proxy_pids() {
  case "$1" in
    nginx | nginx_auth) echo "$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')" ;;
    otpgate) echo "$otpgate_pid" ;;
    otpgate_alt) echo "$alt_pid" ;;
  esac
}
port_of() { case "$1" in nginx) echo "$NGX" ;; nginx_auth) echo "$NGX_AUTH" ;; otpgate) echo "$OTP" ;; otpgate_alt) echo "$ALT" ;; esac; }
hz=$(getconf CLK_TCK)

# wrk's latency figures come with units; convert to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

run() { # proxy seconds -> "rps p99_ms cpu_us_per_req cpu_util"
  local proxy=$1 secs=$2 before after out rps p99 reqs
  local headers=()
  case "$proxy" in otpgate*) headers=("${otpgate_headers[@]}") ;; esac
  # shellcheck disable=SC2046
  before=$(ticks $(proxy_pids "$proxy"))
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency "${headers[@]}" "http://127.0.0.1:$(port_of "$proxy")/")
  # shellcheck disable=SC2046
  after=$(ticks $(proxy_pids "$proxy"))
  if echo "$out" | grep -q "Non-2xx"; then
    echo "proxy-load: $proxy answered non-2xx responses:" >&2; echo "$out" >&2; exit 1
  fi
  rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v r="$rps" -v p="$p99" -v t=$((after - before)) -v n="$reqs" -v hz="$hz" -v s="$secs" \
    'BEGIN { cpu = t / hz; printf "%.0f %.3f %.2f %.0f\n", r, p, cpu * 1e6 / n, 100 * cpu / s }'
}

# The same figures at a fixed rate, from h2load's per-request log (start, status, microseconds).
run_rate() { # proxy seconds -> "rps p99_ms cpu_us_per_req cpu_util"
  local proxy=$1 secs=$2 before after log=$work/latency.log reqs
  local headers=()
  case "$proxy" in otpgate*) headers=("${otpgate_headers[@]}") ;; esac
  rm -f "$log"
  # shellcheck disable=SC2046
  before=$(ticks $(proxy_pids "$proxy"))
  taskset -c "$LOAD_CPU" h2load --h1 -t1 -c"$CONNECTIONS" -D"$secs" \
    --rps="$(awk -v r="$RATE" -v c="$CONNECTIONS" 'BEGIN { printf "%.3f", r / c }')" \
    --log-file="$log" "${headers[@]}" "http://127.0.0.1:$(port_of "$proxy")/" > /dev/null
  # shellcheck disable=SC2046
  after=$(ticks $(proxy_pids "$proxy"))
  if awk '$2 < 200 || $2 > 299 { bad = 1 } END { exit !bad }' "$log"; then
    echo "proxy-load: $proxy answered non-2xx responses" >&2; exit 1
  fi
  reqs=$(wc -l < "$log")
  p99=$(cut -f3 "$log" | sort -n | awk -v n="$reqs" 'NR == int(n * 0.99 + 0.999) { printf "%.3f", $1 / 1000 }')
  awk -v p="$p99" -v t=$((after - before)) -v n="$reqs" -v hz="$hz" -v s="$secs" \
    'BEGIN { cpu = t / hz; printf "%.0f %.3f %.2f %.0f\n", n / s, p, cpu * 1e6 / n, 100 * cpu / s }'
}
if [ -n "$RATE" ]; then run() { run_rate "$@"; }; fi

echo "proxy-load: route=$ROUTE runtime=$RUNTIME${alt_pid:+ (otpgate_alt: $other${ALT_BINARY:+ $ALT_BINARY})} rate=${RATE:-max} rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
for proxy in "${proxies[@]}"; do run "$proxy" "$WARMUP" > /dev/null; done

printf '%-6s %-10s %10s %9s %15s %9s\n' round proxy rps p99_ms cpu_us_per_req cpu_pct
: > "$work/results"
for round in $(seq "$ROUNDS"); do
  for proxy in "${proxies[@]}"; do
    read -r rps p99 cpu util < <(run "$proxy" "$DURATION")
    printf '%-6s %-10s %10s %9s %15s %9s\n' "$round" "$proxy" "$rps" "$p99" "$cpu" "$util"
    echo "$proxy $rps $p99 $cpu" >> "$work/results"
  done
done

median() { # proxy column
  awk -v p="$1" -v c="$2" '$1 == p {print $c}' "$work/results" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
for proxy in "${proxies[@]}"; do
  echo "median $proxy rps=$(median "$proxy" 2) p99_ms=$(median "$proxy" 3) cpu_us_per_req=$(median "$proxy" 4)"
done
if [ "$ROUTE" = protected ]; then
  awk -v a="$(median otpgate 2)" -v b="$(median nginx_auth 2)" 'BEGIN { printf "ratio_rps_vs_nginx_auth=%.3f\n", a / b }'
fi
awk -v a="$(median otpgate 4)" -v b="$(median nginx 4)" 'BEGIN { printf "ratio_cpu_per_req=%.3f\n", a / b }'
awk -v a="$(median otpgate 3)" -v b="$(median nginx 3)" 'BEGIN { printf "ratio_p99=%.3f\n", a / b }'
if [ -n "$alt_pid" ]; then
  awk -v a="$(median otpgate_alt 2)" -v b="$(median nginx 2)" 'BEGIN { printf "ratio_rps_alt=%.3f\n", a / b }'
fi
awk -v a="$(median otpgate 2)" -v b="$(median nginx 2)" 'BEGIN { printf "ratio_rps=%.3f\n", a / b }'
