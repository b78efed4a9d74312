#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: deterministic, so a change's effect
# shows on a busy machine where requests/s do not. otpgate runs under valgrind in front of an
# nginx upstream; curl sends N keep-alive requests over one connection after a warm-up of 300;
# the counters are zeroed before and dumped after them. Prints per_request= (instructions, user
# space only: the kernel's share is not counted) and leaves the profile for callgrind_annotate.
#
# Requires: valgrind, nginx, curl.
#
#   benches/proxy-instructions.sh                   # ROUTE=protected: a minted session cookie
#   ROUTE=token benches/proxy-instructions.sh       # a service token (service_auth policy)
#   ROUTE=bypass N=5000 benches/proxy-instructions.sh
#   BACKENDS=shared benches/proxy-instructions.sh   # state on Redis, credentials on PostgreSQL
#   EXTRA_CONFIG='identity_assertion: { enabled: false }' benches/proxy-instructions.sh
#   RUNTIME=per_core benches/proxy-instructions.sh  # limits.runtime: per_core
#   callgrind_annotate --inclusive=yes "$OUT.1" | less
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OTPGATE=${OTPGATE:-$root/target/release/otpgate}
ROUTE=${ROUTE:-protected}   # protected (cookie) | token | bypass
N=${N:-2000}
BACKENDS=${BACKENDS:-embedded}   # embedded | shared (throwaway Redis + PostgreSQL)
EXTRA_CONFIG=${EXTRA_CONFIG:-}   # more top-level YAML for otpgate's config
# shellcheck source=benches/backends.sh
. "$root/benches/backends.sh"
RUNTIME=${RUNTIME:-multi_thread}   # limits.runtime: multi_thread | per_core
BASE_PORT=${BASE_PORT:-19900}
OUT=${OUT:-${TMPDIR:-/tmp}/otpgate-callgrind-$ROUTE.out}
for tool in valgrind callgrind_control nginx curl; do
  command -v "$tool" >/dev/null || { echo "proxy-instructions: $tool is required (apt-get install valgrind nginx curl)" >&2; exit 2; }
done
rm -f "$OUT" "$OUT".*
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
  *) policy='{ name: machines, action: service_auth, include: [ { service_token: bench } ] }, { name: staff, action: allow, include: [ { email_domain: bench.test } ] }' ;;
esac
cat > "$work/otpgate.yaml" <<C
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
C
if [ "$BACKENDS" = shared ]; then
  start_backends "$work" $((BASE_PORT + 10)) 1
  printf '%s\n' "$BACKEND_CONFIG" >> "$work/otpgate.yaml"
fi
if [ -n "$EXTRA_CONFIG" ]; then printf '%s\n' "$EXTRA_CONFIG" >> "$work/otpgate.yaml"; fi
sed 's/policies: .*/policies: [ { name: open, action: bypass } ]/' "$work/otpgate.yaml" > "$work/pre.yaml"
tok=$("$OTPGATE" --config "$work/pre.yaml" service-token create bench 2>&1)
{ echo "service_tokens:"; echo "$tok" | sed -n '/^  - name/,$p'; } >> "$work/otpgate.yaml"
headers=()
case "$ROUTE" in
  protected) headers=(-H "Cookie: $("$OTPGATE" --config "$work/otpgate.yaml" mint-cookie --app bench --email load@bench.test --ttl 1h)") ;;
  token) headers=(-H "$(echo "$tok" | grep '^Otpgate-Client-Id')" -H "$(echo "$tok" | grep '^Otpgate-Client-Secret')") ;;
esac
nginx -c "$work/upstream.conf" & up=$!
valgrind --tool=callgrind --callgrind-out-file="$OUT" "$OTPGATE" --config "$work/otpgate.yaml" > "$work/o.log" 2>&1 & cg=$!
trap 'kill $up $cg 2>/dev/null; stop_backends; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 300); do curl -sf -o /dev/null "${headers[@]}" "http://127.0.0.1:$OTP/" && break; sleep 0.2; done
curl -sf -o /dev/null "${headers[@]}" "http://127.0.0.1:$OTP/w[1-300]"
callgrind_control -z $cg >/dev/null
code=$(curl -s -o /dev/null -w '%{http_code}\n' "${headers[@]}" "http://127.0.0.1:$OTP/r[1-$N]" | sort | uniq -c)
callgrind_control -d $cg >/dev/null
sleep 1
echo "statuses: $code"
f=$(ls -t "$OUT"* | head -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "route=$ROUTE runtime=$RUNTIME n=$N Ir=$ir per_request=$((ir / N)) file=$f"
