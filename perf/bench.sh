#!/bin/bash
# perf/bench.sh - first side-by-side benchmark of ringmx (issue 2, section 7).
#
# One run, three targets, alternating:
#   ceiling  smtp-source straight into smtp-sink (127.0.0.1:2526): the load path
#            without any gateway in between
#   postfix  the Postfix 3.7 peer (127.0.0.1:2525, durable queue, relays to the sink)
#   ringmx   the ringmx under test, on a free loopback port, durability "fsync",
#            spool in a temporary directory (accepted mail stays queued: ringmx
#            does not relay yet, so only its ACCEPT rate counts)
# 100 KB messages, one message per connection, 4, 8 and 16 sessions, ROUNDS
# rounds; each run is one call of ../shared/peers/bench.sh (smtp-source -c).
# Prints a table of medians and one machine-readable line per session count:
#   BENCH sessions=N ceiling=.. postfix=.. ringmx=.. ringmx_cpu_ms=.. postfix_cpu_ms=.. ratio_ceiling=.. ratio_cpu=..
#
# Usage: perf/bench.sh            (from anywhere; paths are relative to the repo)
#        perf/bench.sh --table RAW   re-print the table of a saved raw file
# Env (defaults):
#   RINGMX_BIN=build/ringmx  RINGMXCTL_BIN=build/ringmxctl  (both copied to the temp dir first)
#   SESSIONS="4 8 16"  ROUNDS=3  MSGS=2000  SIZE=100000  WARMUP=200 (msgs per target, not recorded)
#   SHARDS=0 (ringmx shards; 0 = one per online CPU)  PORT= (ringmx port; default: first free from 2530)
#   SEND_TIMEOUT=40 (s per smtp-source run)  E2E_TIMEOUT=20 STALL_TIMEOUT=10 (ceiling/postfix only)
#   BUDGET_S=540 (runs not started by then are skipped, so the whole thing stays bounded)
#   PROFILE=1: after the table, one more ringmx run at the largest session count under
#              `perf record -g -p PID`; the top symbols are printed and the report saved.
#   OUT_DIR=/var/tmp/ringmx-bench (raw results, table, ringmx log, perf report are kept there)
#   BENCH_TMP=/var/tmp (parent of the temporary spool directory; use a real disk, not tmpfs)
#   KEEP_TMP=1 keeps the temporary directory (spool) instead of deleting it.
#   PEERS_DIR=<repo>/../shared/peers
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$HERE/../../shared/peers}
[[ -x $PEERS_DIR/bench.sh && -x $PEERS_DIR/peers.sh ]] || { echo "bench.sh: peers harness not found at $PEERS_DIR" >&2; exit 1; }
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)

SESSIONS=${SESSIONS:-4 8 16} ROUNDS=${ROUNDS:-3} MSGS=${MSGS:-2000} SIZE=${SIZE:-100000} WARMUP=${WARMUP:-200}
SHARDS=${SHARDS:-0} BUDGET_S=${BUDGET_S:-540} PROFILE=${PROFILE:-0}
SEND_TIMEOUT=${SEND_TIMEOUT:-40} E2E_TIMEOUT=${E2E_TIMEOUT:-20} STALL_TIMEOUT=${STALL_TIMEOUT:-10}
OUT_DIR=${OUT_DIR:-/var/tmp/ringmx-bench}
RCPT=b@example.net FROM=a@example.com     # passed to the peers' bench.sh (its defaults too)
SINK_PORT=2526 POSTFIX_PORT=2525

note() { echo "# $*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- table ----
# Raw lines: "RUN target=T round=R rc=N RESULT-fields..." (fields of the peers' RESULT line)
render_table() { # render_table RAWFILE
awk -v sessions="$(sed -n "s/.*sessions='\([^']*\)'.*/\1/p" "$1" | head -1)" \
    -v msgs="$(sed -n 's/^# bench .* msgs=\([0-9]*\).*/\1/p' "$1" | head -1)" \
    -v size="$(sed -n 's/^# bench .* size=\([0-9]*\).*/\1/p' "$1" | head -1)" \
    -v rounds="$(sed -n 's/^# bench .* rounds=\([0-9]*\).*/\1/p' "$1" | head -1)" '
function med(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return -1
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt(v, d) { return (v < 0) ? "-" : sprintf("%." d "f", v) }
function div(a, b) { return (a < 0 || b <= 0) ? -1 : a / b }
/^RUN / {
    delete f
    for (i = 2; i <= NF; i++) { p = index($i, "="); if (p) f[substr($i, 1, p - 1)] = substr($i, p + 1) }
    t = f["target"]; s = f["sessions"]; k = t SUBSEP s
    runs[k]++
    st = f["status"]
    # only the accept side counts: ringmx keeps its mail, so E2E_INCOMPLETE is expected there
    acc_ok = (st != "" && st !~ /SEND_ERR|PARTIAL_ACCEPT|NO_RESULT|SKIPPED/ && f["accepted"] == f["msgs"])
    if (t == "ringmx" && f["died"] == 1) acc_ok = 0
    if (acc_ok) ok[k]++
    if (!acc_ok || (t != "ringmx" && st != "OK")) bad[k] = bad[k] " r" f["round"] ":" st
    if (f["accept_rate"] == "") next
    rate[k] = rate[k] " " f["accept_rate"]
    if (f["accepted"] > 0 && f["peer_cpu_s"] >= 0) cpu[k] = cpu[k] " " 1000 * f["peer_cpu_s"] / f["accepted"]
    busy[k] = busy[k] " " f["busy_pct"]
    R[t, s, f["round"]] = f["accept_rate"]; C[t, s, f["round"]] = (f["accepted"] > 0 ? 1000 * f["peer_cpu_s"] / f["accepted"] : -1)
}
END {
    printf "\nringmx vs Postfix vs ceiling: %d x %d-byte messages per run, one message per connection,\n", msgs, size
    printf "durability fsync for both; medians of %d rounds (targets alternate inside each round)\n\n", rounds
    printf "%4s | %9s %9s %9s | %9s %9s | %8s %8s | %s\n", "sess", "ceiling/s", "postfix/s", "ringmx/s", "pf_ms/msg", "rmx_ms/msg", "rmx/ceil", "rmx/pf", "runs ok (ceil pf rmx)"
    printf "-----+-------------------------------+----------------------+-------------------+----------------------\n"
    m = split(sessions, S, " ")
    for (j = 1; j <= m; j++) {
        s = S[j]
        c = med(rate["ceiling" SUBSEP s]); p = med(rate["postfix" SUBSEP s]); r = med(rate["ringmx" SUBSEP s])
        pc = med(cpu["postfix" SUBSEP s]); rc = med(cpu["ringmx" SUBSEP s])
        rr = div(r, c); rcpu = div(rc, pc)
        # paired ratios: ringmx vs the targets of the same round, then the median
        pr = ""; pcr = ""
        for (q = 1; q <= rounds; q++) {
            if ((("ringmx", s, q) in R) && (("ceiling", s, q) in R) && R["ceiling", s, q] > 0) pr = pr " " R["ringmx", s, q] / R["ceiling", s, q]
            if ((("ringmx", s, q) in C) && (("postfix", s, q) in C) && C["postfix", s, q] > 0 && C["ringmx", s, q] >= 0) pcr = pcr " " C["ringmx", s, q] / C["postfix", s, q]
        }
        printf "%4d | %9s %9s %9s | %9s %9s | %8s %8s | %d/%d %d/%d %d/%d\n", s, fmt(c, 1), fmt(p, 1), fmt(r, 1), fmt(pc, 3), fmt(rc, 3), fmt(rr, 3), fmt(rcpu, 3),
            ok["ceiling" SUBSEP s], runs["ceiling" SUBSEP s], ok["postfix" SUBSEP s], runs["postfix" SUBSEP s], ok["ringmx" SUBSEP s], runs["ringmx" SUBSEP s]
        line[j] = sprintf("BENCH sessions=%d ceiling=%s postfix=%s ringmx=%s ringmx_cpu_ms=%s postfix_cpu_ms=%s ratio_ceiling=%s ratio_cpu=%s ratio_ceiling_paired=%s ratio_cpu_paired=%s busy_pct_ringmx=%s runs_ok=%d/%d",
            s, fmt(c, 1), fmt(p, 1), fmt(r, 1), fmt(rc, 3), fmt(pc, 3), fmt(rr, 3), fmt(rcpu, 3), fmt(med(pr), 3), fmt(med(pcr), 3), fmt(med(busy["ringmx" SUBSEP s]), 0),
            ok["ringmx" SUBSEP s], runs["ringmx" SUBSEP s])
        verdict[j] = sprintf("sessions=%d: ringmx/ceiling %s (aim >= 0.80: %s), ringmx CPU/postfix CPU %s (aim <= 0.10: %s)", s, fmt(rr, 2),
            (rr < 0 ? "n/a" : (rr >= 0.80 ? "met" : "MISSED")), fmt(rcpu, 2), (rcpu < 0 ? "n/a" : (rcpu <= 0.10 ? "met" : "MISSED")))
    }
    print ""
    print "msg/s = accepted messages / smtp-source wall time (the 250s after DATA); ms/msg = CPU of the"
    print "target process tree per accepted message (Postfix: master and all its children, incl. relaying"
    print "to the sink; ringmx: the ringmx process, all threads). rmx/ceil and rmx/pf are ratios of the medians."
    for (j = 1; j <= m; j++) print verdict[j]
    for (k in bad) { split(k, kk, SUBSEP); printf "note: %s sessions=%s non-OK runs:%s\n", kk[1], kk[2], bad[k] }
    print ""
    for (j = 1; j <= m; j++) print line[j]
}' "$1"
}

if [[ ${1:-} == --table ]]; then render_table "${2:?raw file}"; exit; fi
(($# == 0)) || die "usage: $0 [--table RAWFILE]   (parameters via environment, see the header)"

# ---------------------------------------------------------------- setup ----
RINGMX_BIN=${RINGMX_BIN:-$REPO/build/ringmx}
RINGMXCTL_BIN=${RINGMXCTL_BIN:-$REPO/build/ringmxctl}
[[ -x $RINGMX_BIN ]] || die "no ringmx binary at $RINGMX_BIN (meson compile -C build, or set RINGMX_BIN)"
command -v smtp-source >/dev/null || die "smtp-source missing (Debian package postfix; run $PEERS_DIR/setup.sh)"

mkdir -p "$OUT_DIR"
stamp=$(date +%Y%m%d-%H%M%S)
raw=$OUT_DIR/bench-$stamp.raw
table=$OUT_DIR/bench-$stamp.txt
tmp=$(mktemp -d "${BENCH_TMP:-/var/tmp}/ringmx-bench.XXXXXX") || die "mktemp failed"
[[ $(stat -f -c %T "$tmp") == tmpfs ]] && note "WARNING: $tmp is on tmpfs: fsync costs nothing there, the comparison is unfair"

# Copies: other people rebuild build/ringmx while this runs; a restart (after a
# crash) and perf's symbol lookup must see the same binary.
cp "$RINGMX_BIN" "$tmp/ringmx" || die "cannot copy $RINGMX_BIN"
ctl=""; [[ -x $RINGMXCTL_BIN ]] && cp "$RINGMXCTL_BIN" "$tmp/ringmxctl" && ctl=$tmp/ringmxctl

RMX_PID="" started_peers=() crashes=0 perf_pid=""
cleanup() {
    local i
    if [[ -n $perf_pid ]] && kill -0 "$perf_pid" 2>/dev/null; then kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null; fi
    stop_ringmx
    for ((i = ${#started_peers[@]} - 1; i >= 0; i--)); do "$PEERS_DIR/peers.sh" stop "${started_peers[i]}" >/dev/null 2>&1; done
    [[ -s $tmp/ringmx.log ]] && cp "$tmp/ringmx.log" "$OUT_DIR/bench-$stamp.ringmx.log"
    if [[ ${KEEP_TMP:-0} == 1 ]]; then note "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

port_listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

if [[ -z ${PORT:-} ]]; then
    for ((PORT = 2530; PORT < 2600; PORT++)); do port_listening "$PORT" || break; done
    ((PORT < 2600)) || die "no free port in 2530-2599"
fi
port_listening "$PORT" && die "port $PORT is busy"

cat > "$tmp/ringmx.json" <<EOF
{
  "hostname": "bench.test",
  "shards": $SHARDS,
  "listeners": [{"name": "bench", "address": "127.0.0.1:$PORT"}],
  "relay": {"domains": ["${RCPT#*@}"]},
  "spool": {"path": "$tmp/spool", "durability": "fsync"},
  "control": {"socket": "$tmp/ctl.sock"},
  "log": {"level": "warn"}
}
EOF
"$tmp/ringmx" --check-config "$tmp/ringmx.json" >"$tmp/check.out" 2>&1 || die "config rejected: $(cat "$tmp/check.out")"

start_ringmx() {
    "$tmp/ringmx" -c "$tmp/ringmx.json" </dev/null >>"$tmp/ringmx.log" 2>&1 &
    RMX_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$RMX_PID" 2>/dev/null || { RMX_PID=""; return 1; }
        ss -ltnpH "sport = :$PORT" 2>/dev/null | grep -q "pid=$RMX_PID," && return 0
        sleep 0.1
    done
    return 1
}
stop_ringmx() {
    [[ -n $RMX_PID ]] || return 0
    local i
    if kill -0 "$RMX_PID" 2>/dev/null; then
        kill -TERM "$RMX_PID"
        for ((i = 0; i < 100; i++)); do kill -0 "$RMX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$RMX_PID" 2>/dev/null && { note "ringmx (pid $RMX_PID) ignored SIGTERM for 10s: SIGKILL"; kill -KILL "$RMX_PID"; }
    fi
    wait "$RMX_PID" 2>/dev/null; local rc=$?
    ((rc != 0 && rc != 143)) && note "ringmx pid $RMX_PID exited with status $rc"
    RMX_PID=""
}
ringmx_alive() { [[ -n $RMX_PID ]] && kill -0 "$RMX_PID" 2>/dev/null; }

ensure_peer() { # ensure_peer sink|postfix : start it unless running; remember what we started
    [[ -n $("$PEERS_DIR/peers.sh" pid "$1") ]] && return 0
    "$PEERS_DIR/peers.sh" start "$1" || return 1
    started_peers+=("$1")
}

ensure_peer sink || die "cannot start smtp-sink (peers.sh start sink)"
ensure_peer postfix || die "cannot start the Postfix peer (run $PEERS_DIR/setup.sh as root first)"
start_ringmx || die "ringmx did not come up on 127.0.0.1:$PORT: $(tail -n 5 "$tmp/ringmx.log")"
note "ringmx $(basename "$RINGMX_BIN") pid $RMX_PID on 127.0.0.1:$PORT, shards=$SHARDS, spool $tmp/spool ($(stat -f -c %T "$tmp"))"

# --------------------------------------------------------------- runs ----
targets=(ceiling postfix ringmx)
port_of() { case $1 in ceiling) echo $SINK_PORT ;; postfix) echo $POSTFIX_PORT ;; ringmx) echo "$PORT" ;; esac; }
rmx_accepted=0

run_one() { # run_one TARGET SESSIONS MSGS ROUND -> appends a RUN line to $raw (unless ROUND=warmup)
    local t=$1 s=$2 m=$3 r=$4 out rc line died=0 env=()
    case $t in
        ringmx)
            ringmx_alive || { note "ringmx not running before a run: restarting"; start_ringmx || note "ringmx restart FAILED"; }
            # ringmx does not relay yet: do not wait for arrivals at the sink
            env=(PEER_PID="$RMX_PID" E2E_TIMEOUT=0 STALL_TIMEOUT=1) ;;
        ceiling) env=(PEER_PID="$("$PEERS_DIR/peers.sh" pid sink)" E2E_TIMEOUT="$E2E_TIMEOUT" STALL_TIMEOUT="$STALL_TIMEOUT") ;;
        postfix) env=(E2E_TIMEOUT="$E2E_TIMEOUT" STALL_TIMEOUT="$STALL_TIMEOUT") ;;
    esac
    out=$(env "${env[@]}" SEND_TIMEOUT="$SEND_TIMEOUT" FROM="$FROM" RCPT="$RCPT" \
        "$PEERS_DIR/bench.sh" "$(port_of "$t")" "$s" "$m" "$SIZE" 2>&1); rc=$?
    if [[ $t == ringmx ]] && ! ringmx_alive; then
        died=1; crashes=$((crashes + 1))
        wait "$RMX_PID" 2>/dev/null; note "RINGMX DIED during $t sessions=$s round=$r (exit status $?); see its log"
        RMX_PID=""
    fi
    line=$(grep '^RESULT' <<<"$out" | tail -n 1)
    [[ -n $line ]] || line="RESULT status=NO_RESULT sessions=$s msgs=$m"
    if [[ $t == ringmx ]]; then   # everything ringmx accepted stays in its queue (checked at the end)
        local a; a=$(sed -n 's/.* accepted=\([0-9]*\).*/\1/p' <<<"$line"); rmx_accepted=$((rmx_accepted + ${a:-0}))
    fi
    {
        echo "## $t sessions=$s round=$r"
        grep -v '^RESULT' <<<"$out" | sed 's/^/##   /'
    } >> "$raw.log"
    [[ $r == warmup || $r == profile ]] && return 0
    echo "RUN target=$t round=$r rc=$rc died=$died ${line#RESULT }" >> "$raw"
    # show progress and anything smtp-source complained about
    sed -n 's/^# \(accepted .*\)/\1/p' <<<"$out" | sed "s/^/#   $t: /" >&2
    grep -A5 'smtp-source stderr' <<<"$out" | grep -v 'smtp-source stderr' | sed "s/^/#   $t smtp-source: /" >&2
}

drain_postfix() { # wait (bounded) until Postfix's queue is empty, so its relaying does not overlap the next run
    local i
    for ((i = 0; i < 300; i++)); do (( $("$PEERS_DIR/peers.sh" qsize postfix) == 0 )) && return 0; sleep 0.1; done
    note "postfix: queue not empty after 30s ($("$PEERS_DIR/peers.sh" qsize postfix) left)"
}

t_start=$SECONDS
{
    echo "# bench $stamp host: $(nproc) CPU, $(uname -r)  size=$SIZE msgs=$MSGS rounds=$ROUNDS sessions='$SESSIONS' shards=$SHARDS durability=fsync"
    echo "# ringmx: $RINGMX_BIN (sha1 $(sha1sum "$tmp/ringmx" | cut -c1-12)) port $PORT; git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '+dirty')"
} | tee "$raw" >&2

if ((WARMUP > 0)); then
    note "warm-up: $WARMUP msgs per target at 4 sessions (not recorded)"
    for t in "${targets[@]}"; do run_one "$t" 4 "$WARMUP" warmup; [[ $t == postfix ]] && drain_postfix; done
fi

for s in $SESSIONS; do
    for ((r = 1; r <= ROUNDS; r++)); do
        order=("${targets[@]}")
        ((r % 2 == 0)) && order=(ringmx postfix ceiling)     # alternate the order between rounds
        for t in "${order[@]}"; do
            if ((SECONDS - t_start > BUDGET_S)); then
                note "time budget ${BUDGET_S}s spent: skipping $t sessions=$s round=$r"
                echo "RUN target=$t round=$r rc=-1 died=0 sessions=$s msgs=$MSGS status=SKIPPED" >> "$raw"
                continue
            fi
            note "sessions=$s round $r/$ROUNDS: $t (t=$((SECONDS - t_start))s)"
            run_one "$t" "$s" "$MSGS" "$r"
            [[ $t == postfix ]] && drain_postfix
        done
    done
done

# ------------------------------------------------------------- checks ----
if [[ -n $ctl ]] && ringmx_alive && ((crashes == 0)); then
    # every accepted message must be in ringmx's queue (nothing is delivered yet)
    q=$(timeout 60 "$ctl" -s "$tmp/ctl.sock" queue list 2>/dev/null | grep -c .)
    if [[ $q == "$rmx_accepted" ]]; then note "ringmx queue holds $q messages = all accepted ones"
    else note "CHECK: ringmx queue list shows $q messages, smtp-source counted $rmx_accepted accepted"; fi
    echo "# check: ringmx queue list=$q accepted=$rmx_accepted" >> "$raw"
fi
((crashes > 0)) && echo "# ringmx crashes: $crashes" >> "$raw"
if [[ -s $tmp/ringmx.log ]]; then
    note "ringmx stderr: $(wc -l < "$tmp/ringmx.log") lines (saved as $OUT_DIR/bench-$stamp.ringmx.log); last ones:"
    tail -n 5 "$tmp/ringmx.log" | sed 's/^/#   /' >&2
fi

render_table "$raw" | tee "$table"
note "raw results: $raw (per-run output: $raw.log)"
note "table:       $table   (total $((SECONDS - t_start))s, spool used $(du -sh "$tmp/spool" 2>/dev/null | cut -f1))"

# ------------------------------------------------------------ profile ----
if [[ $PROFILE == 1 ]]; then
    command -v perf >/dev/null || { note "PROFILE=1 but perf is not installed (apt-get install linux-perf)"; exit 0; }
    ringmx_alive || start_ringmx || { note "profile: ringmx not running"; exit 0; }
    s=${SESSIONS##* }
    note "profile: perf record -g -p $RMX_PID during one ringmx run at $s sessions"
    perf record -g -F 999 -o "$tmp/perf.data" -p "$RMX_PID" >"$tmp/perf.out" 2>&1 &
    perf_pid=$!
    sleep 0.5
    run_one ringmx "$s" "$MSGS" profile
    kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null; perf_pid=""
    perf report -i "$tmp/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null > "$OUT_DIR/bench-$stamp.perf.txt"
    perf report -i "$tmp/perf.data" --children --sort symbol --stdio -g caller,0.5,callee --percent-limit 2 2>/dev/null > "$OUT_DIR/bench-$stamp.perf-callers.txt"
    echo "top symbols of ringmx (self time, $s sessions):"
    grep -E '^ +[0-9]' "$OUT_DIR/bench-$stamp.perf.txt" | head -n 15
    note "perf reports: $OUT_DIR/bench-$stamp.perf.txt, $OUT_DIR/bench-$stamp.perf-callers.txt"
fi
