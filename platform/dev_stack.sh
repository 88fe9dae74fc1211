#!/usr/bin/env bash
# Local dev/CI services for the SiameseIM platform: a Ray head, an MLflow tracking
# server and an S3-compatible object store (moto). Production uses the same
# settings against a real cluster (infra/), MinIO/AWS S3 and a shared MLflow.
#
#   platform/dev_stack.sh up [ray|mlflow|s3 ...]   start (default: all three)
#   platform/dev_stack.sh up --nodes N [...]         also N Ray worker nodes: separate Ray nodes on this host
#                                                   (RAY_NODE_CPUS each, default 1; RAY_NODE_GPUS logical GPUs, default 0)
#   platform/dev_stack.sh down                      stop what this script started
#   platform/dev_stack.sh status                    print addresses / health
#   eval "$(platform/dev_stack.sh env)"             export MLFLOW_TRACKING_URI, AWS_*, RAY_API_SERVER_ADDRESS ...
#
# State (pid files, logs, the MLflow db) lives in $SIAMIM_STACK_DIR (default runs/stack, git-ignored).
# Ports: RAY_PORT (6380), RAY_DASHBOARD_PORT (8265), RAY_DASHBOARD_AGENT_PORT (52365: the head's job agent,
# which `ray job submit` goes through), MLFLOW_PORT (5000), S3_PORT (9000).
#
# Lifetimes: the S3 server (moto) keeps objects in memory, so each `up` of it is an empty store. The MLflow
# db is kept only as long as the artifacts it points at: when MLflow starts against a different S3 session
# than the one its db was written with, the old db is moved to $SIAMIM_STACK_DIR/archive/<time>/ (nothing is
# deleted) and MLflow starts empty. Without the S3 server, MLflow keeps artifacts on disk and both persist.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${SIAMIM_STACK_DIR:-$REPO/runs/stack}"
VENV_BIN="${SIAMIM_VENV_BIN:-$REPO/.venv/bin}"
[ -x "$VENV_BIN/ray" ] || VENV_BIN="$(dirname "$(command -v ray)")"
export PATH="$VENV_BIN:$PATH"   # the head runs submitted entrypoints (`python ...`) with this PATH
RAY_PORT="${RAY_PORT:-6380}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_DASHBOARD_AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52365}"
RAY_NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
RAY_NODES=0   # worker nodes beside the head (up --nodes N)
RAY_NODE_CPUS="${RAY_NODE_CPUS:-1}"
RAY_NODE_GPUS="${RAY_NODE_GPUS:-0}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
S3_PORT="${S3_PORT:-9000}"
S3_BUCKET="${S3_BUCKET:-siamim}"
# dev/CI: no token auth (Ray 2.60 turns it on for local clusters by default: ray-project/ray#64755)
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-dev}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-dev}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
mkdir -p "$STACK_DIR"

wait_http() {  # url seconds name: until the url answers; on failure, say why with the tail of $name.log
  local url="$1" deadline=$((SECONDS + $2)) name="$3" pid
  pid="$(cat "$STACK_DIR/$name.pid")"
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name: exited before $url answered; the end of $STACK_DIR/$name.log:" >&2
      tail -n 20 "$STACK_DIR/$name.log" >&2; stop_pid "$name" >/dev/null; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$name: not ready after $2 s: $url; the end of $STACK_DIR/$name.log:" >&2
      tail -n 20 "$STACK_DIR/$name.log" >&2; return 1
    fi
    sleep 0.5
  done
}

up_s3() {
  if [ -f "$STACK_DIR/s3.pid" ] && kill -0 "$(cat "$STACK_DIR/s3.pid")" 2>/dev/null; then echo "s3: already up"; return; fi
  setsid "$VENV_BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STACK_DIR/s3.log" 2>&1 &
  echo $! >"$STACK_DIR/s3.pid"
  wait_http "http://127.0.0.1:$S3_PORT/" 30 s3
  echo "$(date +%Y%m%d-%H%M%S)-$$-$RANDOM" >"$STACK_DIR/s3.session"   # a new, empty in-memory store
  "$VENV_BIN/python" - <<EOF
import boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:$S3_PORT")
if "$S3_BUCKET" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket="$S3_BUCKET")
EOF
  echo "s3: http://127.0.0.1:$S3_PORT (bucket $S3_BUCKET; in-memory, lost on down)"
}

up_mlflow() {
  if [ -f "$STACK_DIR/mlflow.pid" ] && kill -0 "$(cat "$STACK_DIR/mlflow.pid")" 2>/dev/null; then echo "mlflow: already up"; return; fi
  local artifacts="$STACK_DIR/mlflow-artifacts" session="local"
  if [ -f "$STACK_DIR/s3.pid" ] && kill -0 "$(cat "$STACK_DIR/s3.pid")" 2>/dev/null; then
    artifacts="s3://$S3_BUCKET/mlflow"   # artifacts on the object store, credentials on the server only
    export MLFLOW_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
    session="s3:$(cat "$STACK_DIR/s3.session" 2>/dev/null || echo unknown)"
  fi
  # Keep the runs only while the artifacts (and checkpoints) they point at exist: see "Lifetimes" above.
  if [ -f "$STACK_DIR/mlflow.db" ] && [ "$(cat "$STACK_DIR/mlflow.session" 2>/dev/null)" != "$session" ]; then
    local archive; archive="$STACK_DIR/archive/$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$archive"
    mv "$STACK_DIR/mlflow.db" "$archive/"
    [ -f "$STACK_DIR/mlflow.session" ] && mv "$STACK_DIR/mlflow.session" "$archive/"
    echo "mlflow: its runs pointed at artifacts of an S3 server that is gone (in-memory); moved the db to $archive"
  fi
  echo "$session" >"$STACK_DIR/mlflow.session"
  # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no Huey job consumers (on by default since mlflow/mlflow#19850)
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$VENV_BIN/mlflow" server \
    --backend-store-uri "sqlite:///$STACK_DIR/mlflow.db" --artifacts-destination "$artifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$STACK_DIR/mlflow.log" 2>&1 &
  echo $! >"$STACK_DIR/mlflow.pid"
  wait_http "http://127.0.0.1:$MLFLOW_PORT/health" 90 mlflow
  echo "mlflow: http://127.0.0.1:$MLFLOW_PORT (artifacts: $artifacts)"
}

up_ray() {
  if [ -f "$STACK_DIR/ray.pid" ] && kill -0 "$(cat "$STACK_DIR/ray.pid")" 2>/dev/null; then
    echo "ray: already up"   # worker nodes that are gone (`up --nodes N` again) are still started below
  else
    up_ray_head || return
  fi
  local k
  for k in $(seq "$RAY_NODES"); do  # one at a time: on a loaded host, raylets started together can time out
    [ -f "$STACK_DIR/ray-node-$k.pid" ] && kill -0 "$(cat "$STACK_DIR/ray-node-$k.pid")" 2>/dev/null && continue
    up_ray_node "$k"
    wait_ray_nodes_up "$k" 90 || { echo "ray-node-$k: did not join; starting it again" >&2; stop_pid "ray-node-$k"; up_ray_node "$k"; wait_ray_nodes_up "$k" 120; }
  done
}

up_ray_head() {
  if [ "$RAY_DASHBOARD_PORT" = 52365 ]; then  # Ray's default dashboard-agent port: whichever binds first wins
    echo "ray: RAY_DASHBOARD_PORT=52365 is the port Ray's dashboard agent listens on; choose another (default 8265)" >&2
    return 2
  fi
  # Another Ray instance on this host (a job's embedded one, another stack) may hold the agent port: the head
  # would start, but `ray job submit` to it would fail with "No available agent to submit job".
  if ! "$VENV_BIN/python" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', int(sys.argv[1])))" "$RAY_DASHBOARD_AGENT_PORT" 2>/dev/null; then
    echo "ray: port $RAY_DASHBOARD_AGENT_PORT (RAY_DASHBOARD_AGENT_PORT, the head's job agent) is in use, likely by another Ray instance on this host; set RAY_DASHBOARD_AGENT_PORT to a free port" >&2
    return 2
  fi
  # --block keeps `ray start` in the foreground of its own session, so `down` stops exactly this head
  # (its process group) and never other Ray clusters on the host, as `ray stop` would.
  # RAY_API_SERVER_ADDRESS: Ray Train's PlacementGroupCleaner queries the state API without an address and,
  # with another Ray instance on the host, prints "Found multiple active Ray instances" tracebacks
  # (ray-project/ray#25639).
  RAY_API_SERVER_ADDRESS="http://127.0.0.1:$RAY_DASHBOARD_PORT" setsid "$VENV_BIN/ray" start --head --block --num-cpus "$RAY_NUM_CPUS" --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" --dashboard-agent-listen-port "$RAY_DASHBOARD_AGENT_PORT" \
    --object-store-memory "${RAY_OBJECT_STORE_BYTES:-1000000000}" --disable-usage-stats >"$STACK_DIR/ray.log" 2>&1 &
  echo $! >"$STACK_DIR/ray.pid"
  wait_http "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" 90 ray
  # The dashboard can answer before `ray start` fails on the head's raylet: wait for the head node itself.
  wait_ray_nodes 1 90 "$(cat "$STACK_DIR/ray.pid")" || {
    echo "ray: the head did not come up; the end of $STACK_DIR/ray.log:" >&2
    tail -n 20 "$STACK_DIR/ray.log" >&2; stop_pid ray >/dev/null; return 1
  }
  echo "ray: 127.0.0.1:$RAY_PORT, dashboard / job API http://127.0.0.1:$RAY_DASHBOARD_PORT"
}

wait_ray_nodes_up() {  # k seconds: until the head sees every live worker node of this stack up to k, plus itself
  local alive=1 j
  for j in $(seq "$1"); do
    [ -f "$STACK_DIR/ray-node-$j.pid" ] && kill -0 "$(cat "$STACK_DIR/ray-node-$j.pid")" 2>/dev/null && alive=$((alive + 1))
  done
  wait_ray_nodes "$alive" "$2"
}

up_ray_node() {  # k: a worker node joining the head, its own raylet and object store (a real multi-node cluster)
  local name="ray-node-$1"
  if [ -f "$STACK_DIR/$name.pid" ] && kill -0 "$(cat "$STACK_DIR/$name.pid")" 2>/dev/null; then echo "$name: already up"; return; fi
  setsid "$VENV_BIN/ray" start --address "127.0.0.1:$RAY_PORT" --block --num-cpus "$RAY_NODE_CPUS" \
    --num-gpus "$RAY_NODE_GPUS" --resources "{\"siamim_node_$1\": 1}" \
    --object-store-memory "${RAY_OBJECT_STORE_BYTES:-1000000000}" --disable-usage-stats >"$STACK_DIR/$name.log" 2>&1 &
  echo $! >"$STACK_DIR/$name.pid"
  echo "$name: joining 127.0.0.1:$RAY_PORT ($RAY_NODE_CPUS CPU, $RAY_NODE_GPUS logical GPU, resource siamim_node_$1)"
}

wait_ray_nodes() {  # count seconds [pid]: until the head sees this many alive nodes (or process pid exits)
  "$VENV_BIN/python" - "$1" "$2" "http://127.0.0.1:$RAY_DASHBOARD_PORT" "${3:-}" <<'PY'
import os, sys, time
from ray.util.state import list_nodes
want, deadline, address = int(sys.argv[1]), time.time() + float(sys.argv[2]), sys.argv[3]
while True:
    if sys.argv[4]:
        try:
            os.kill(int(sys.argv[4]), 0)
        except ProcessLookupError:
            sys.exit(f"ray: process {sys.argv[4]} exited before {want} node(s) were alive")
    try:
        alive = [n for n in list_nodes(address=address, raise_on_missing_output=False) if n.state == "ALIVE"]
    except Exception:  # the state API is not up yet
        alive = []
    if len(alive) >= want:
        print(f"ray: {len(alive)} nodes alive (head + {len(alive) - 1})", flush=True)
        break
    if time.time() > deadline:
        sys.exit(f"ray: only {len(alive)} of {want} nodes alive after {sys.argv[2]} s; see the ray-node-*.log files")
    time.sleep(1.0)
PY
}

# Ray's pointer to "the current cluster" (what a plain ray.init() joins); `ray start` writes it, and
# stopping the head by its process group leaves it behind, naming a head that is gone (ray-project/ray#45771).
RAY_ADDRESS_FILE="${RAY_TMPDIR:-${TMPDIR:-/tmp}}/ray/ray_current_cluster"

down_ray() {
  local f
  for f in "$STACK_DIR"/ray-node-*.pid; do [ -e "$f" ] && stop_pid "$(basename "$f" .pid)"; done
  stop_pid ray
  if [ -f "$RAY_ADDRESS_FILE" ] && grep -q ":$RAY_PORT\s*$" "$RAY_ADDRESS_FILE"; then
    rm -f "$RAY_ADDRESS_FILE"
    echo "ray: removed $RAY_ADDRESS_FILE (it named this stopped head)"
  fi
}

stop_pid() {  # name
  local f="$STACK_DIR/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f")"
  # Its process group (setsid), also when the leader is gone: a `ray start` that failed half-way leaves
  # the processes it had started (GCS, dashboard) in the group.
  if kill -0 "$pid" 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
  echo "$1: down"
}

case "${1:-}" in
  up)
    shift
    if [ "${1:-}" = "--nodes" ]; then
      [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "--nodes needs a number of worker nodes, e.g. --nodes 2" >&2; exit 2; }
      RAY_NODES="$2"; shift 2
    fi
    services=("$@"); [ ${#services[@]} -gt 0 ] || services=(s3 mlflow ray)
    for s in "${services[@]}"; do "up_$s"; done ;;
  down)
    down_ray; stop_pid mlflow; stop_pid s3
    [ -f "$STACK_DIR/s3.session" ] && echo "note: S3 objects were in memory and are gone; the next 'up' archives the MLflow db that pointed at them"
    true ;;
  status)
    curl -fsS "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" >/dev/null 2>&1 && echo "ray: up (http://127.0.0.1:$RAY_DASHBOARD_PORT)" || echo "ray: down"
    curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1 && echo "mlflow: up (http://127.0.0.1:$MLFLOW_PORT)" || echo "mlflow: down"
    curl -fsS "http://127.0.0.1:$S3_PORT/" >/dev/null 2>&1 && echo "s3: up (http://127.0.0.1:$S3_PORT)" || echo "s3: down" ;;
  env)
    echo "export RAY_AUTH_MODE=$RAY_AUTH_MODE"
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT   # for ray job submit/status/logs"
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    echo "export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION"
    echo "export SIAMIM_S3_STORAGE='s3://$S3_BUCKET/runs?endpoint_override=127.0.0.1:$S3_PORT&scheme=http'" ;;
  *)
    sed -n '2,18p' "$0"; exit 2 ;;
esac
