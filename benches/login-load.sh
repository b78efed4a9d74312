#!/usr/bin/env bash
# Login-path throughput: "Send me a code" requests per second otpgate answers, with the rate
# limits raised (docs/product.md#s8 target: at least 5000/s without blocking on SMTP).
#
# One browser's login transaction (cookie + CSRF token from GET /.otpgate/login) posts a new,
# allowed address with every request, so every request does the full work: limits, policy, PIN,
# digest, state, and a mail queued to the development outbox. The answer is never faster than
# the anti-enumeration floor (10 ms), so the load needs many connections.
#
# Requires: wrk, taskset, curl.
#
#   benches/login-load.sh
#   DURATION=20 CONNECTIONS=512 benches/login-load.sh
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-256}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT:-18950}
ADMIN=$((PORT + 1))

root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}
for tool in wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "login-load: $tool is required" >&2; exit 2; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin otpgate)
fi

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/otpgate.yaml" <<EOF
version: 1
listen: { http: 127.0.0.1:$PORT, admin: 127.0.0.1:$ADMIN }
data_dir: $work/data
log: { level: warn, access: false }
mail: { transport: outbox, queue_size: 1000000 }
rate_limits:
  code_sends_per_address: 1000/1m
  code_resend_cooldown: 1ms
  login_requests_per_ip: 1000000000/1m
apps:
  - name: bench
    hosts: [127.0.0.1]
    public_url: http://127.0.0.1:$PORT
    upstream: builtin:echo
    policies: [ { name: staff, action: allow, include: [ { email_domain: bench.test } ] } ]
EOF

taskset -c "$PROXY_CPU" "$OTPGATE" --config "$work/otpgate.yaml" > "$work/otpgate.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

page=$(curl -s -c "$work/jar" "http://127.0.0.1:$PORT/.otpgate/login")
csrf=$(printf '%s' "$page" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
cookie=$(awk '$6 == "otpgate-login" {print $6 "=" $7}' "$work/jar")
[ -n "$csrf" ] && [ -n "$cookie" ] || { echo "login-load: no login form" >&2; cat "$work/otpgate.log" >&2; exit 1; }

cat > "$work/post.lua" <<EOF
local n = 0
local id = 0
function setup(thread)
  thread:set("tid", id)
  id = id + 1
end
function init(args)
  tid = tid or 0
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "$cookie"
wrk.headers["Origin"] = "http://127.0.0.1:$PORT"
request = function()
  n = n + 1
  return wrk.format(nil, "/.otpgate/login", nil, "csrf=$csrf&email=u" .. tid .. "x" .. n .. "%40bench.test")
end
EOF

echo "login-load: duration=${DURATION}s connections=$CONNECTIONS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/post.lua" "http://127.0.0.1:$PORT/")
echo "$out" | grep -E "Latency|Req/Sec|requests in|Non-2xx|Socket errors|^ +(50|99)%"
metrics=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
sent=$(printf '%s\n' "$metrics" | awk '/^otpgate_codes_total\{.*outcome="sent"/ {s += $2} END {print s + 0}')
dropped=$(printf '%s\n' "$metrics" | awk '/^otpgate_mail_dropped_total/ {s += $2} END {print s + 0}')
echo "codes_sent=$sent mail_dropped=$dropped"
if echo "$out" | grep -q "Non-2xx"; then
  echo "login-load: some answers were not 200" >&2
  exit 1
fi
echo "$out" | awk '/^Requests\/sec:/ {printf "login_rps=%.0f\n", $2}'
