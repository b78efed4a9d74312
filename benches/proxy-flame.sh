#!/usr/bin/env bash
# A flame graph of otpgate proxying under load: perf samples otpgate (DWARF call graphs, the
# release build keeps line tables) while wrk drives the route, then inferno folds the stacks
# and draws the SVG (the folded stacks are kept beside it). Prints the heaviest frames: self,
# and inclusive in user space, as shares of all samples.
#
# Requires: perf (linux-perf), wrk, nginx, inferno (cargo install inferno).
#
#   benches/proxy-flame.sh                          # ROUTE=protected: a minted session cookie
#   ROUTE=bypass SECONDS_=10 OUT=/tmp/bypass.svg benches/proxy-flame.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}
ROUTE=${ROUTE:-protected}   # protected | bypass
SECONDS_=${SECONDS_:-8}
BASE_PORT=${BASE_PORT:-19950}
OUT=${OUT:-${TMPDIR:-/tmp}/otpgate-$ROUTE.svg}
for tool in perf wrk nginx inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || { echo "proxy-flame: $tool is required" >&2; exit 2; }
done
work=$(mktemp -d)
UP=$BASE_PORT OTP=$((BASE_PORT + 2)) ADMIN=$((BASE_PORT + 3))
mkdir -p "$work/tmp" "$work/data"
cat > "$work/upstream.conf" <<C
worker_processes 1; daemon off; error_log $work/e.log warn; pid $work/u.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp; uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from the upstream\n"; } } }
C
case "$ROUTE" in
  bypass) policy='{ name: open, action: bypass }' ;;
  protected) policy='{ name: staff, action: allow, include: [ { email_domain: bench.test } ] }' ;;
  *) echo "proxy-flame: ROUTE must be protected or bypass" >&2; exit 2 ;;
esac
cat > "$work/otpgate.yaml" <<C
version: 1
listen: { http: 127.0.0.1:$OTP, admin: 127.0.0.1:$ADMIN }
data_dir: $work/data
log: { level: warn, access: false }
apps:
  - name: bench
    hosts: [127.0.0.1]
    public_url: http://127.0.0.1:$OTP
    upstream: http://127.0.0.1:$UP
    policies: [ $policy ]
C
headers=()
if [ "$ROUTE" = protected ]; then
  headers=(-H "Cookie: $("$OTPGATE" --config "$work/otpgate.yaml" mint-cookie --app bench --email load@bench.test --ttl 1h)")
fi
taskset -c 1 nginx -c "$work/upstream.conf" & up=$!
taskset -c 0 "$OTPGATE" --config "$work/otpgate.yaml" > "$work/o.log" 2>&1 & gw=$!
trap 'kill $up $gw 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "${headers[@]}" "http://127.0.0.1:$OTP/" && break; sleep 0.1; done
taskset -c 1 wrk -t1 -c64 -d2s "${headers[@]}" "http://127.0.0.1:$OTP/" > /dev/null
taskset -c 1 wrk -t1 -c64 -d"$((SECONDS_ + 2))s" "${headers[@]}" "http://127.0.0.1:$OTP/" > "$work/wrk.txt" &
load=$!
sleep 1
perf record -q -F 997 --call-graph dwarf,16384 -p "$gw" -o "$work/perf.data" -- sleep "$SECONDS_" 2> /dev/null
wait "$load"
perf script -i "$work/perf.data" 2> /dev/null | inferno-collapse-perf --all > "${OUT%.svg}.folded"
inferno-flamegraph --title "otpgate, $ROUTE route" < "${OUT%.svg}.folded" > "$OUT"
echo "flame graph: $OUT (stacks: ${OUT%.svg}.folded); wrk: $(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt") req/s"
# Shares of all samples: where the time is spent (the leaf frame: self), and the heaviest frames
# of user space counted inclusively (every frame a sample passes through, once per sample).
# Kernel frames carry `_[k]`.
echo "== self"
awk '{ n = $NF; $NF = ""; k = split($0, f, ";"); g = f[k]; sub(/^ +| +$/, "", g); self[g] += n; total += n }
     END { for (g in self) printf "%5.1f%%  %s\n", 100 * self[g] / total, substr(g, 1, 110) }' "${OUT%.svg}.folded" \
  | sort -rn | head -"${TOP:-25}"
echo "== user space, inclusive"
awk '{ n = $NF; $NF = ""; split($0, f, ";"); delete seen
       for (i in f) { g = f[i]; sub(/^ +| +$/, "", g); if (g !~ /_\[k\]$/ && !(g in seen)) { seen[g] = 1; inc[g] += n } }
       total += n }
     END { for (g in inc) printf "%5.1f%%  %s\n", 100 * inc[g] / total, substr(g, 1, 110) }' "${OUT%.svg}.folded" \
  | sort -rn | head -"${TOP:-25}"
