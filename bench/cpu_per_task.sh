#!/bin/bash
# CPU per task of a taskq worker (parent + children) and of Redis, draining N preloaded
# no-op tasks: what a busy machine blurs least (docs/performance.md, "Prefork, round 2").
# Usage: PORT=6544 N=60000 bench/cpu_per_task.sh -P prefork -c 2   (uses PORT and PORT+1)
cd "$(dirname "$0")/.."
PORT=${PORT:-6544}; SIG=$((PORT + 1))
N=${N:-60000}
redis-server --port $PORT --save '' --appendonly no --daemonize yes --pidfile /tmp/bench-cpu-$PORT.pid >/dev/null
redis-server --port $SIG --save '' --appendonly no --daemonize yes --pidfile /tmp/bench-cpu-$SIG.pid >/dev/null
sleep 0.5
redis-cli -p $PORT flushall >/dev/null; redis-cli -p $SIG flushall >/dev/null
export BENCH_BROKER_URL=redis://127.0.0.1:$PORT/0 BENCH_SIGNAL_URL=redis://127.0.0.1:$SIG/0 BENCH_QUEUE=bench
bench/.venv/bin/python -c "
from bench.apps.taskq_app import noop
noop.delay_many([()] * $N)"
bench/.venv/bin/python -m taskq -A bench.apps.taskq_app worker -l warning "$@" > /tmp/bench-cpu-worker-$PORT.log 2>&1 &
W=$!
bench/.venv/bin/python - "$W" "$N" "$*" "$PORT" "$SIG" <<'PY'
import sys, time, psutil, redis
pid, n, label = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
port, sig_port = int(sys.argv[4]), int(sys.argv[5])
rs = redis.Redis(port=port); sig = redis.Redis(port=sig_port)
def done(): return int(sig.get("bench:done") or 0)
while done() < 200: time.sleep(0.002)
procs = [psutil.Process(pid)] + psutil.Process(pid).children()
def cpu():
    out = {}
    for p in procs:
        try: out[p.pid] = sum(p.cpu_times()[:2])
        except psutil.Error: out[p.pid] = 0.0
    return out
def rcpu():
    i = rs.info("cpu"); return i["used_cpu_user"] + i["used_cpu_sys"]
d0, c0, rc0, t0 = done(), cpu(), rcpu(), time.time()
while done() < n - 2000: time.sleep(0.002)
d1, c1, rc1, t = done(), cpu(), rcpu(), time.time() - t0
k = d1 - d0
per = [(c1[p] - c0[p]) / k * 1e6 for p in c0]
load = open("/proc/loadavg").read().split()[0]
print(f"{label}: {k/t:,.0f}/s; worker CPU {sum(per):.1f} us/task ({' + '.join(f'{v:.1f}' for v in per)}); redis {(rc1-rc0)/k*1e6:.1f} us/task; load {load}")
PY
kill -TERM $W; wait $W
redis-cli -p $PORT shutdown nosave >/dev/null 2>&1; redis-cli -p $SIG shutdown nosave >/dev/null 2>&1; sleep 0.5
