#!/usr/bin/env bash
# HTTP/2 throughput over one client connection: otpgate (upstream_protocol: http2) against
# nginx's grpc_pass (its HTTP/2 proxy), both in front of the same h2c upstream (an nginx answering
# a small body), pinned to the same CPU, driven alternately by h2load from another CPU over one
# h2c connection with many concurrent streams. Prints req/s per run, the medians and ratio_rps=
# (otpgate / nginx) last. The route is bypass (no session) unless ROUTE=token, which sends a
# service token to a service_auth policy.
#
# Requires: nginx, h2load, taskset (Debian: nginx nghttp2-client util-linux).
#
#   benches/h2-load.sh                    # 3 rounds, 200k requests, 1 connection, 100 streams
#   REQUESTS=500000 STREAMS=200 ROUTE=token benches/h2-load.sh
set -euo pipefail

REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
STREAMS=${STREAMS:-100}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ROUTE=${ROUTE:-bypass}
BASE_PORT=${BASE_PORT:-18950}

root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}
for tool in nginx h2load taskset; do
  command -v "$tool" >/dev/null || { echo "h2-load: $tool is required (apt-get install nginx nghttp2-client util-linux)" >&2; exit 2; }
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
UP=$BASE_PORT NGX=$((BASE_PORT + 1)) OTP=$((BASE_PORT + 2)) ADMIN=$((BASE_PORT + 3))
mkdir -p "$work/tmp" "$work/data"
common="daemon off; error_log $work/nginx-error.log warn;"
temps="client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;"

cat > "$work/upstream.conf" <<C
worker_processes 1; $common pid $work/upstream.pid;
events { worker_connections 4096; }
http {
  access_log off; $temps
  keepalive_requests 10000000; http2_max_concurrent_streams 512;
  server { listen 127.0.0.1:$UP http2; location / { return 200 "hello from the upstream\n"; } }
}
C
cat > "$work/proxy.conf" <<C
worker_processes 1; $common pid $work/proxy.pid;
events { worker_connections 4096; }
http {
  access_log off; $temps
  keepalive_requests 10000000; http2_max_concurrent_streams 512;
  upstream app { server 127.0.0.1:$UP; keepalive 512; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$NGX http2;
    location / {
      grpc_pass grpc://app;
      grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      grpc_set_header X-Forwarded-Proto \$scheme;
      grpc_set_header X-Forwarded-Host \$http_host;
      grpc_set_header X-Real-IP \$remote_addr;
      grpc_set_header Forwarded "for=\$remote_addr;host=\"\$http_host\";proto=\$scheme";
    }
  }
}
C
case "$ROUTE" in
  bypass) policy='{ name: open, action: bypass }' ;;
  token) policy='{ name: machines, action: service_auth, include: [ { service_token: bench } ] }' ;;
  *) echo "h2-load: ROUTE must be bypass or token" >&2; exit 2 ;;
esac
app="version: 1
listen: { http: 127.0.0.1:$OTP, admin: 127.0.0.1:$ADMIN }
data_dir: $work/data
log: { level: warn, access: false }
apps:
  - name: bench
    hosts: [127.0.0.1]
    public_url: http://127.0.0.1:$OTP
    upstream: http://127.0.0.1:$UP
    upstream_protocol: http2
    policies:"
headers=()
if [ "$ROUTE" = token ]; then
  printf '%s [ { name: open, action: bypass } ]\n' "$app" > "$work/pre.yaml"
  tok=$("$OTPGATE" --config "$work/pre.yaml" service-token create bench 2>&1)
  { printf '%s [ %s ]\n' "$app" "$policy"; echo "service_tokens:"; echo "$tok" | sed -n '/^  - name/,$p'; } > "$work/otpgate.yaml"
  headers=(-H "$(echo "$tok" | grep '^Otpgate-Client-Id')" -H "$(echo "$tok" | grep '^Otpgate-Client-Secret')")
else
  printf '%s [ %s ]\n' "$app" "$policy" > "$work/otpgate.yaml"
fi

taskset -c "$LOAD_CPU" nginx -c "$work/upstream.conf" & pids+=($!)
taskset -c "$PROXY_CPU" nginx -c "$work/proxy.conf" & pids+=($!)
taskset -c "$PROXY_CPU" "$OTPGATE" --config "$work/otpgate.yaml" > "$work/otpgate.log" 2>&1 & pids+=($!)
for port in "$UP" "$NGX" "$OTP"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

run() { # port -> req/s
  local out
  out=$(taskset -c "$LOAD_CPU" h2load -n "$REQUESTS" -c 1 -m "$STREAMS" "${headers[@]}" "http://127.0.0.1:$1/" 2>&1)
  if ! echo "$out" | grep -q " 0 failed, 0 errored"; then echo "h2-load: errors on port $1:" >&2; echo "$out" >&2; exit 1; fi
  if ! echo "$out" | grep -q "status codes: $REQUESTS 2xx"; then echo "h2-load: non-2xx on port $1:" >&2; echo "$out" >&2; exit 1; fi
  echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}'
}
echo "h2-load: route=$ROUTE rounds=$ROUNDS requests=$REQUESTS streams=$STREAMS connections=1"
run "$NGX" > /dev/null; run "$OTP" > /dev/null
: > "$work/results"
for round in $(seq "$ROUNDS"); do
  for proxy in nginx otpgate; do
    port=$NGX; [ "$proxy" = otpgate ] && port=$OTP
    rps=$(run "$port")
    printf '%-6s %-8s %10s\n' "$round" "$proxy" "$rps"
    echo "$proxy $rps" >> "$work/results"
  done
done
median() { awk -v p="$1" '$1 == p {print $2}' "$work/results" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
echo "median nginx rps=$(median nginx)"
echo "median otpgate rps=$(median otpgate)"
awk -v a="$(median otpgate)" -v b="$(median nginx)" 'BEGIN { printf "ratio_rps=%.3f\n", a / b }'
