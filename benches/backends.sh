# Sourced by the load scripts: throwaway shared backends for BACKENDS=shared, so a run measures
# otpgate with `state` on Redis and `credentials` on PostgreSQL (as several replicas run it)
# against the same run's embedded defaults. Both servers listen on loopback, keep nothing
# (no RDB/AOF, fsync off) and are stopped with the script. PostgreSQL refuses to run as root:
# under root its cluster belongs to `nobody`.
#
#   start_backends DIR PORT CPU   # Redis on PORT, PostgreSQL on PORT+1, both pinned to CPU;
#                                 # sets BACKEND_CONFIG (the YAML lines) and BACKEND_PIDS
#   stop_backends

BACKEND_CONFIG=
BACKEND_PIDS=()
BACKEND_PGDATA=

start_backends() {
  local dir=$1 port=$2 cpu=$3 pgbin runas=()
  for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "backends: $tool is required (apt-get install redis-server)" >&2; exit 2; }
  done
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pgbin/initdb" ] || { echo "backends: PostgreSQL is required (apt-get install postgresql)" >&2; exit 2; }
  taskset -c "$cpu" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" > "$dir/redis.log" 2>&1 &
  BACKEND_PIDS+=($!)
  mkdir -p "$dir/pg"
  if [ "$(id -u)" = 0 ]; then
    chmod o+x "$dir"
    chown nobody "$dir/pg"
    runas=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  fi
  BACKEND_PGDATA=$dir/pg/data
  "${runas[@]}" "$pgbin/initdb" -D "$BACKEND_PGDATA" -U otpgate --auth=trust -N > "$dir/initdb.log" 2>&1
  taskset -c "$cpu" "${runas[@]}" "$pgbin/pg_ctl" -D "$BACKEND_PGDATA" -l "$dir/pg/log" -w \
    -o "-p $((port + 1)) -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off" start > /dev/null
  BACKEND_STOP=("${runas[@]}" "$pgbin/pg_ctl" -D "$BACKEND_PGDATA" -m immediate stop)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  BACKEND_CONFIG="state: redis://127.0.0.1:$port/0
credentials: postgres://otpgate@127.0.0.1:$((port + 1))/postgres?sslmode=disable"
}

stop_backends() {
  for p in "${BACKEND_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$BACKEND_PGDATA" ] && "${BACKEND_STOP[@]}" > /dev/null 2>&1 || true
}
