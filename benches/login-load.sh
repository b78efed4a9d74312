#!/usr/bin/env bash
# Login-path throughput: "Send me a code" requests per second otpgate answers, with the rate
# limits raised (docs/product.md#s8 target: at least 5000/s without blocking on SMTP).
#
# One browser's login transaction (cookie + CSRF token from GET /.otpgate/login) posts a new,
# allowed address with every request, so every request does the full work: limits, policy, PIN,
# digest, state, and a mail queued to the development outbox. The answer is never faster than
# the anti-enumeration floor (10 ms), so the load needs many connections.
#
# STATE=redis runs the same load with the state on a throwaway redis-server (pinned to
# REDIS_CPU, the load generator's core by default) and prints the Redis round trips and the
# commands Redis executes per request, the Redis memory per live code (extrapolated to a
# million) and otpgate's resident memory at idle and after the load.
#
# Requires: wrk, taskset, curl (and redis-server, redis-cli with STATE=redis).
#
#   benches/login-load.sh
#   DURATION=20 CONNECTIONS=512 benches/login-load.sh
#   STATE=redis SKIP_BUILD=1 benches/login-load.sh
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-256}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT:-18950}
ADMIN=$((PORT + 1))
STATE=${STATE:-memory}
REDIS_PORT=$((PORT + 2))
REDIS_CPU=${REDIS_CPU:-$LOAD_CPU}

root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}
tools="wrk taskset curl"
[ "$STATE" = redis ] && tools="$tools redis-server redis-cli"
for tool in $tools; do
  command -v "$tool" >/dev/null || { echo "login-load: $tool is required" >&2; exit 2; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$root" && cargo build --release --quiet --bin otpgate)
fi

work=$(mktemp -d)
pid=
redis_pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

state_line="state: memory"
if [ "$STATE" = redis ]; then
  taskset -c "$REDIS_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  state_line="state: redis://127.0.0.1:$REDIS_PORT/0"
fi
rinfo() { redis-cli -p "$REDIS_PORT" info "$1" | tr -d '\r' | awk -F: -v k="$2" '$1 == k {print $2}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }

cat > "$work/otpgate.yaml" <<EOF
version: 1
$state_line
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

echo "login-load: state=$STATE duration=${DURATION}s connections=$CONNECTIONS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU"
echo "load: $(uptime | sed 's/.*load average/load average/')"
idle_rss=$(rss_kib)
if [ "$STATE" = redis ]; then
  empty_used=$(rinfo memory used_memory)
  cmds_before=$(rinfo stats total_commands_processed)
fi
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
echo "otpgate_rss_idle_mib=$((idle_rss / 1024)) otpgate_rss_after_load_mib=$(($(rss_kib) / 1024))"
if [ "$STATE" = redis ]; then
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  cmds_after=$(rinfo stats total_commands_processed)
  # The INFO calls themselves are counted too; over many requests they do not show.
  echo "$cmds_before $cmds_after $requests" |
    awk '{printf "redis_commands_per_request=%.2f (script-internal commands included)\n", ($2 - $1) / $3}'
  # Round trips: what the gateway sends, as MONITOR shows it (commands a script runs are
  # marked "lua"), over a short, light second run.
  redis-cli -p "$REDIS_PORT" monitor > "$work/monitor.log" 2>&1 &
  mon=$!
  sleep 0.5
  sample=$(taskset -c "$LOAD_CPU" wrk -t1 -c8 -d2s -s "$work/post.lua" "http://127.0.0.1:$PORT/" | awk '/requests in/ {print $1}')
  sleep 0.5
  kill "$mon" 2>/dev/null || true
  wait "$mon" 2>/dev/null || true
  trips=$(grep -c ' \[0 127.0.0.1' "$work/monitor.log" || true)
  echo "$trips $sample" | awk '{printf "redis_round_trips_per_request=%.2f (%d requests sampled)\n", $1 / $2, $2}'
  # Memory per pending login: every request above was a new address (its budgets, cooldown
  # and index of codes: keys that live as long as a code), while this one browser transaction
  # holds one code record at a time, so its size is added once per login.
  keys=$(redis-cli -p "$REDIS_PORT" dbsize)
  code_key=$(redis-cli -p "$REDIS_PORT" --scan --pattern 'otpgate:pin:*' | head -1)
  code_bytes=$(redis-cli -p "$REDIS_PORT" memory usage "$code_key")
  used=$(rinfo memory used_memory)
  echo "$used $empty_used $requests $sample $code_bytes $keys" | awk '{n = $3 + $4; b = ($1 - $2) / n + $5;
    printf "redis_bytes_per_pending_login=%.0f (%d logins, %d keys; code record %d bytes) => %.2f GiB per million\n", b, n, $6, $5, b * 1e6 / 2^30}'
fi
