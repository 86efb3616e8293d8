#!/usr/bin/env bash
# usage: record_cpu.sh BIN SECONDS [--record DIR]: runs `BIN demo`, prints per-thread CPU (ms and
# us per frame) over a SECONDS window after 12 s of warm-up (BENCHMARKS.md, research data).
BIN=$1; SECS=$2; shift 2
PORT=$((18000 + RANDOM % 1000))
$BIN demo --markets 500 --rate 2000 --api 127.0.0.1:$PORT "$@" > ${TMPDIR:-/tmp}/cpu-demo.log 2>&1 &
PID=$!
sleep 12
snap() { for t in /proc/$PID/task/*; do n=$(cat $t/comm); s=($(sed 's/.*) //' $t/stat)); echo "$n $(( ${s[11]} + ${s[12]} ))"; done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort; }
frames() { curl -s 127.0.0.1:$PORT/stats | python3 -c "import json,sys; print(json.load(sys.stdin)['totals']['frames'])"; }
F0=$(frames); snap > ${TMPDIR:-/tmp}/s0
sleep $SECS
F1=$(frames); snap > ${TMPDIR:-/tmp}/s1
kill -INT $PID; wait $PID 2>/dev/null
echo "frames $((F1 - F0))"
join ${TMPDIR:-/tmp}/s0 ${TMPDIR:-/tmp}/s1 | awk -v f=$((F1 - F0)) '{d=($3-$2)*10; printf "%-16s %6d ms  %.2f us/frame\n", $1, d, d*1000/f}'
