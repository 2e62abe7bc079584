#!/bin/bash
# perf/bench.sh - ringmx vs Postfix vs the load-path ceiling, side by side in one run.
#
# MODE=relay (default, issue 3): relay end to end.
#   ceiling  smtp-source straight into smtp-sink (127.0.0.1:2526): the load path
#            without any gateway in between
#   postfix  the Postfix 3.7 peer (127.0.0.1:2525, durable queue, relays to the sink)
#   ringmx   the ringmx under test, on a free loopback port, durability "fsync",
#            route "*" -> smtp://127.0.0.1:2526 (the same sink), spool in a temporary dir
#   The figure that counts is END-TO-END msg/s: arrivals at the sink / time from the
#   start of smtp-source to the last arrival; CPU is per relayed message. After every
#   ringmx run its queue must drain to empty (ringmxctl queue list), checked and reported.
#   Cases (SIZE:SESSIONS[:MSGS]): 100 KB at 4, 8, 16 sessions and 5 KB at 100 sessions.
# MODE=accept (issue 2, section 7): the old accept-only benchmark: ringmx has no
#   routes, keeps what it accepts, and only its ACCEPT rate counts (100 KB, 4/8/16).
#
# One message per connection; each run is one call of ../shared/peers/bench.sh
# (smtp-source -c), targets alternating inside each of ROUNDS rounds. Prints a table
# of medians and one machine-readable BENCH line per case.
#
# Usage: perf/bench.sh              (from anywhere; paths are relative to the repo)
#        perf/bench.sh --table RAW  re-print the table of a saved raw file (either mode)
# Env (defaults):
#   MODE=relay|accept
#   RINGMX_BIN=build/ringmx  RINGMXCTL_BIN=build/ringmxctl  (both copied to the temp dir first)
#   CASES: SIZE:SESSIONS[:MSGS] ... (relay: "100000:4:3000 100000:8:3000 100000:16:3000 5000:100:12000";
#          accept: SIZE:s for s in SESSIONS; a case without MSGS sends MSGS)
#   SESSIONS="4 8 16"  SIZE=100000  MSGS=2000 (default msgs per run)  ROUNDS=3
#   WARMUP=200 (msgs per target at 4 sessions, not recorded)
#   SHARDS=0 (ringmx shards; 0 = one per online CPU)  PORT= (ringmx port; default: first free from 2530)
#   SEND_TIMEOUT=40 (s per smtp-source run)  E2E_TIMEOUT=20 STALL_TIMEOUT=10 (arrival wait at the sink)
#   QUEUE_WAIT=30 (relay: s to wait for ringmx's queue to drain after a run)
#   BUDGET_S=1200 (relay) / 540 (accept): runs not started by then are skipped
#   PROFILE=1: after the table, one more ringmx run per case in PROFILE_CASES (default: the
#              largest messages at the most sessions, and the case with the most sessions)
#              under `perf record -g -p PID`; CPU by thread and top symbols printed.
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

MODE=${MODE:-relay}
SESSIONS=${SESSIONS:-4 8 16} ROUNDS=${ROUNDS:-3} MSGS=${MSGS:-2000} SIZE=${SIZE:-100000} WARMUP=${WARMUP:-200}
SHARDS=${SHARDS:-0} PROFILE=${PROFILE:-0} QUEUE_WAIT=${QUEUE_WAIT:-30}
SEND_TIMEOUT=${SEND_TIMEOUT:-40} E2E_TIMEOUT=${E2E_TIMEOUT:-20} STALL_TIMEOUT=${STALL_TIMEOUT:-10}
OUT_DIR=${OUT_DIR:-/var/tmp/ringmx-bench}
RCPT=b@example.net FROM=a@example.com     # passed to the peers' bench.sh (its defaults too)
SINK_PORT=2526 POSTFIX_PORT=2525

note() { echo "# $*" >&2; }
die() { echo "bench.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- table ----
# Accept-mode raw lines: "RUN target=T round=R rc=N RESULT-fields..." (fields of the peers' RESULT line)
render_accept_table() { # render_accept_table RAWFILE
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
    if (!acc_ok || (t != "ringmx" && st != "OK")) bad[k] = bad[k] " r" f["round"] ":" st (f["died"] == 1 ? "+DIED" : "")
    # no figures from a run in which ringmx died (its CPU counter vanished with it)
    if (f["accept_rate"] == "" || f["died"] == 1) next
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

# Relay raw lines: "RUN target=T round=R rc=N died=D cpu_all_s=.. qfirst=.. qleft=.. qwait_s=.. logwarn=.. RESULT-fields..."
render_relay_table() { # render_relay_table RAWFILE
awk -v cases="$(sed -n "s/.* cases='\([^']*\)'.*/\1/p" "$1" | head -1)" \
    -v rounds="$(sed -n 's/^# bench .* rounds=\([0-9]*\).*/\1/p' "$1" | head -1)" '
function med(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return -1
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt(v, d) { return (v < 0) ? "-" : sprintf("%." d "f", v) }
function div(a, b) { return (a < 0 || b <= 0) ? -1 : a / b }
function kb(sz) { return (sz >= 1000) ? sprintf("%gK", sz / 1000) : sz }
/^RUN / {
    delete f
    for (i = 2; i <= NF; i++) { p = index($i, "="); if (p) f[substr($i, 1, p - 1)] = substr($i, p + 1) }
    t = f["target"]; k = f["size"] ":" f["sessions"]; tk = t SUBSEP k; q = f["round"]
    runs[tk]++
    st = f["status"]
    good = (st == "OK")
    if (t == "ringmx") {
        if (f["died"] == 1) good = 0
        if (f["qleft"] != "") { qruns[k]++; if (f["qleft"] == 0) qempty[k]++; else good = 0
                                if (f["qfirst"] + 0 > qmax[k] + 0) qmax[k] = f["qfirst"]; qw[k] = qw[k] " " f["qwait_s"] }
        if (f["logwarn"] + 0 > 0) { logw[k] += f["logwarn"]; good = 0 }
    }
    if (good) ok[tk]++; else bad[tk] = bad[tk] " r" q ":" st (f["died"] == 1 ? "+DIED" : "") ((f["qleft"] != "" && f["qleft"] != 0) ? "+QUEUE_LEFT=" f["qleft"] : "") ((f["logwarn"] + 0 > 0) ? "+LOG=" f["logwarn"] : "")
    # figures only from complete runs (everything accepted and arrived, ringmx alive, its queue empty)
    if (f["e2e_rate"] == "" || st != "OK" || f["died"] == 1 || (f["qleft"] != "" && f["qleft"] != 0)) next
    n = (f["arrived"] > 0) ? f["arrived"] : f["accepted"]
    E[t, k, q] = f["e2e_rate"]; e2e[tk] = e2e[tk] " " f["e2e_rate"]; acc[tk] = acc[tk] " " f["accept_rate"]
    if (n > 0) {
        C[t, k, q] = 1000 * f["peer_cpu_s"] / n; cpu[tk] = cpu[tk] " " C[t, k, q]
        if (f["cpu_all_s"] != "") cpua[tk] = cpua[tk] " " 1000 * f["cpu_all_s"] / n
        sink[tk] = sink[tk] " " 1000 * f["sink_cpu_s"] / n; src[tk] = src[tk] " " 1000 * f["src_cpu_s"] / n
    }
    busy[tk] = busy[tk] " " f["busy_pct"]
}
END {
    printf "\nRelay end to end: ringmx -> smtp-sink vs Postfix -> smtp-sink vs smtp-source -> smtp-sink (ceiling);\n"
    printf "one message per connection, durability fsync for both; medians of %d rounds (targets alternate)\n\n", rounds
    printf "%5s %4s | %9s %9s %9s %9s | %8s | %8s %8s %8s | %6s | %s\n", "size", "sess", "ceiling/s", "pf e2e/s", "rmx e2e/s", "rmx acc/s", "rmx/ceil",
        "pf ms/m", "rmx ms/m", "rmx/pf", "q empty", "runs ok (ceil pf rmx)"
    printf "-----------+-----------------------------------------+----------+----------------------------+--------+----------------------\n"
    m = split(cases, S, " ")
    for (j = 1; j <= m; j++) {
        split(S[j], cs, ":"); k = cs[1] ":" cs[2]
        c = med(e2e["ceiling" SUBSEP k]); p = med(e2e["postfix" SUBSEP k]); r = med(e2e["ringmx" SUBSEP k]); ra = med(acc["ringmx" SUBSEP k])
        pc = med(cpu["postfix" SUBSEP k]); rc = med(cpu["ringmx" SUBSEP k])
        pca = med(cpua["postfix" SUBSEP k]); rca = med(cpua["ringmx" SUBSEP k])
        rr = div(r, c); rcpu = div(rc, pc)
        pr = ""; pcr = ""
        for (q = 1; q <= rounds; q++) {
            if ((("ringmx", k, q) in E) && (("ceiling", k, q) in E) && E["ceiling", k, q] > 0) pr = pr " " E["ringmx", k, q] / E["ceiling", k, q]
            if ((("ringmx", k, q) in C) && (("postfix", k, q) in C) && C["postfix", k, q] > 0) pcr = pcr " " C["ringmx", k, q] / C["postfix", k, q]
        }
        printf "%5s %4d | %9s %9s %9s %9s | %8s | %8s %8s %8s | %6s | %d/%d %d/%d %d/%d\n", kb(cs[1]), cs[2], fmt(c, 1), fmt(p, 1), fmt(r, 1), fmt(ra, 1), fmt(rr, 3),
            fmt(pc, 3), fmt(rc, 3), fmt(rcpu, 3), (qempty[k] + 0) "/" (qruns[k] + 0),
            ok["ceiling" SUBSEP k], runs["ceiling" SUBSEP k], ok["postfix" SUBSEP k], runs["postfix" SUBSEP k], ok["ringmx" SUBSEP k], runs["ringmx" SUBSEP k]
        line[j] = sprintf("BENCH mode=relay size=%d sessions=%d ceiling=%s postfix_e2e=%s ringmx_e2e=%s ringmx_accept=%s postfix_accept=%s postfix_cpu_ms=%s ringmx_cpu_ms=%s ratio_ceiling=%s ratio_cpu=%s ratio_ceiling_paired=%s ratio_cpu_paired=%s postfix_cpu_ms_drain=%s ringmx_cpu_ms_drain=%s sink_cpu_ms_ceiling=%s sink_cpu_ms_ringmx=%s src_cpu_ms_ceiling=%s src_cpu_ms_ringmx=%s busy_pct_ceiling=%s busy_pct_ringmx=%s queue_empty=%d/%d queue_max_first=%d runs_ok=%d/%d",
            cs[1], cs[2], fmt(c, 1), fmt(p, 1), fmt(r, 1), fmt(ra, 1), fmt(med(acc["postfix" SUBSEP k]), 1), fmt(pc, 3), fmt(rc, 3), fmt(rr, 3), fmt(rcpu, 3),
            fmt(med(pr), 3), fmt(med(pcr), 3), fmt(pca, 3), fmt(rca, 3), fmt(med(sink["ceiling" SUBSEP k]), 3), fmt(med(sink["ringmx" SUBSEP k]), 3),
            fmt(med(src["ceiling" SUBSEP k]), 3), fmt(med(src["ringmx" SUBSEP k]), 3), fmt(med(busy["ceiling" SUBSEP k]), 0), fmt(med(busy["ringmx" SUBSEP k]), 0), qempty[k], qruns[k], qmax[k], ok["ringmx" SUBSEP k], runs["ringmx" SUBSEP k])
        verdict[j] = sprintf("%s x %d sessions: ringmx e2e/ceiling %s (aim >= 0.75: %s), ringmx CPU/Postfix CPU %s (aim <= 0.125: %s)", kb(cs[1]), cs[2], fmt(rr, 2),
            (rr < 0 ? "n/a" : (rr >= 0.75 ? "met" : "MISSED")), fmt(rcpu, 3), (rcpu < 0 ? "n/a" : (rcpu <= 0.125 ? "met" : "MISSED")))
    }
    print ""
    print "ceiling/s, e2e/s = messages arrived at smtp-sink / (last arrival - start of smtp-source); rmx acc/s = ringmx"
    print "accept rate (250s / smtp-source wall time); ms/m = CPU of the target process tree per relayed message from"
    print "the start to the last arrival (Postfix: master and all children; ringmx: the process, all threads);"
    print "q empty = ringmx runs after which queue list was empty; rmx/ceil and rmx/pf are ratios of the medians;"
    print "only complete runs (all accepted and arrived, ringmx alive, queue empty) enter the medians."
    for (j = 1; j <= m; j++) print verdict[j]
    for (x in bad) { split(x, kk, SUBSEP); printf "note: %s %s non-OK runs:%s\n", kk[1], kk[2], bad[x] }
    for (x in logw) printf "note: ringmx wrote %d log lines (level warn) during the %s runs\n", logw[x], x
    print ""
    for (j = 1; j <= m; j++) print line[j]
}' "$1"
}

if [[ ${1:-} == --table ]]; then
    if grep -q '^# bench .* mode=relay' "${2:?raw file}"; then render_relay_table "$2"; else render_accept_table "$2"; fi
    exit
fi
(($# == 0)) || die "usage: $0 [--table RAWFILE]   (parameters via environment, see the header)"
case $MODE in
    relay) CASES=${CASES:-100000:4:3000 100000:8:3000 100000:16:3000 5000:100:12000}; BUDGET_S=${BUDGET_S:-1200} ;;
    accept) CASES=""; for s in $SESSIONS; do CASES+="$SIZE:$s "; done; CASES=${CASES% }; BUDGET_S=${BUDGET_S:-540} ;;
    *) die "MODE must be relay or accept" ;;
esac
for c in $CASES; do [[ $c =~ ^[0-9]+:[0-9]+(:[0-9]+)?$ ]] || die "bad case '$c' in CASES (SIZE:SESSIONS[:MSGS])"; done

# ---------------------------------------------------------------- setup ----
RINGMX_BIN=${RINGMX_BIN:-$REPO/build/ringmx}
RINGMXCTL_BIN=${RINGMXCTL_BIN:-$REPO/build/ringmxctl}
[[ -x $RINGMX_BIN ]] || die "no ringmx binary at $RINGMX_BIN (meson compile -C build, or set RINGMX_BIN)"
[[ $MODE == relay && ! -x $RINGMXCTL_BIN ]] && die "no ringmxctl at $RINGMXCTL_BIN (needed for the queue check)"
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
# CPU ticks of a process tree, the same way the peers' bench.sh counts them
tree_ticks() { [[ -n ${1:-} ]] || { echo 0; return; }; (source "$PEERS_DIR/lib.sh" && tree_cpu_ticks "$1"); }
CLK_TCK=$(getconf CLK_TCK)

if [[ -z ${PORT:-} ]]; then
    for ((PORT = 2530; PORT < 2600; PORT++)); do port_listening "$PORT" || break; done
    ((PORT < 2600)) || die "no free port in 2530-2599"
fi
port_listening "$PORT" && die "port $PORT is busy"

# relay: every domain goes to the sink; connections_per_ip is raised because
# smtp-source opens up to 100 sessions from one address (Postfix exempts
# $mynetworks from its per-client limit). delivery.* keeps its defaults
# (20 connections to the route in all, as Postfix's destination concurrency).
routes=""
[[ $MODE == relay ]] && routes='"routes": [{"domains": ["*"], "to": "smtp://127.0.0.1:'$SINK_PORT'"}],'
cat > "$tmp/ringmx.json" <<JSON
{
  "hostname": "bench.test",
  "shards": $SHARDS,
  "listeners": [{"name": "bench", "address": "127.0.0.1:$PORT"}],
  "relay": {"domains": ["${RCPT#*@}"]},
  $routes
  "limits": {"connections_per_ip": 1000},
  "spool": {"path": "$tmp/spool", "durability": "fsync"},
  "control": {"socket": "$tmp/ctl.sock"},
  "log": {"level": "warn"}
}
JSON
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
log_lines() { [[ -f $tmp/ringmx.log ]] && wc -l < "$tmp/ringmx.log" || echo 0; }
queue_count() { # messages in ringmx's queue (one line each after ringmxctl's "OK"), or -1
    local out; out=$(timeout 20 "$ctl" -s "$tmp/ctl.sock" queue list 2>&1) || { echo -1; return; }
    grep -c . <<<"$out"
}

ensure_peer() { # ensure_peer sink|postfix : start it unless running; remember what we started
    [[ -n $("$PEERS_DIR/peers.sh" pid "$1") ]] && return 0
    local i
    # its port may be held for a moment by someone else's test server (ringmx's
    # default listener is 127.0.0.1:2525, Postfix's port here): retry for up to a minute
    for ((i = 0; i < 30; i++)); do
        "$PEERS_DIR/peers.sh" start "$1" && { started_peers+=("$1"); return 0; }
        note "could not start $1; retrying in 2s"; sleep 2
    done
    return 1
}

ensure_peer sink || die "cannot start smtp-sink (peers.sh start sink)"
ensure_peer postfix || die "cannot start the Postfix peer (run $PEERS_DIR/setup.sh as root first)"
start_ringmx || die "ringmx did not come up on 127.0.0.1:$PORT: $(tail -n 5 "$tmp/ringmx.log")"
note "ringmx $(basename "$RINGMX_BIN") pid $RMX_PID on 127.0.0.1:$PORT, mode=$MODE, shards=$SHARDS, spool $tmp/spool ($(stat -f -c %T "$tmp"))"

# --------------------------------------------------------------- runs ----
targets=(ceiling postfix ringmx)
port_of() { case $1 in ceiling) echo $SINK_PORT ;; postfix) echo $POSTFIX_PORT ;; ringmx) echo "$PORT" ;; esac; }
pid_of() { case $1 in ceiling) "$PEERS_DIR/peers.sh" pid sink ;; postfix) "$PEERS_DIR/peers.sh" pid postfix ;; ringmx) echo "$RMX_PID" ;; esac; }
rmx_accepted=0

drain_postfix() { # wait (bounded) until Postfix's queue is empty, so its relaying does not overlap the next run
    local i
    for ((i = 0; i < 300; i++)); do (( $("$PEERS_DIR/peers.sh" qsize postfix) == 0 )) && return 0; sleep 0.1; done
    note "postfix: queue not empty after 30s ($("$PEERS_DIR/peers.sh" qsize postfix) left)"
}

# relay: after a ringmx run, wait (up to QUEUE_WAIT s) for `queue list` to be empty.
# Sets qfirst (count right after the run), qleft (count at the end), qwait_s.
drain_ringmx() {
    local t0=$EPOCHREALTIME n
    qfirst=$(queue_count); n=$qfirst
    while ((n != 0)) && ringmx_alive; do
        awk -v a="$t0" -v b="$EPOCHREALTIME" -v w="$QUEUE_WAIT" 'BEGIN{exit !(b - a > w)}' && break
        sleep 0.1; n=$(queue_count)
    done
    qleft=$n
    qwait_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
}

run_one() { # run_one TARGET SIZE SESSIONS MSGS ROUND -> appends a RUN line to $raw (unless ROUND=warmup/profile)
    local t=$1 z=$2 s=$3 m=$4 r=$5 out rc line died=0 env=() pid c0 c1 l0 extra=""
    if [[ $t == ringmx ]]; then
        ringmx_alive || { note "ringmx not running before a run: restarting"; start_ringmx || note "ringmx restart FAILED"; }
    fi
    pid=$(pid_of "$t")
    case $t in
        # accept mode: ringmx keeps its mail, so do not wait for arrivals at the sink
        ringmx) if [[ $MODE == accept ]]; then env=(E2E_TIMEOUT=0 STALL_TIMEOUT=1); else env=(E2E_TIMEOUT="$E2E_TIMEOUT" STALL_TIMEOUT="$STALL_TIMEOUT"); fi ;;
        *) env=(E2E_TIMEOUT="$E2E_TIMEOUT" STALL_TIMEOUT="$STALL_TIMEOUT") ;;
    esac
    [[ $t != postfix ]] && env+=(PEER_PID="$pid")
    l0=$(log_lines); c0=$(tree_ticks "$pid")
    out=$(env "${env[@]}" SEND_TIMEOUT="$SEND_TIMEOUT" FROM="$FROM" RCPT="$RCPT" \
        "$PEERS_DIR/bench.sh" "$(port_of "$t")" "$s" "$m" "$z" 2>&1); rc=$?
    if [[ $t == ringmx ]] && ! ringmx_alive; then
        died=1; crashes=$((crashes + 1))
        wait "$RMX_PID" 2>/dev/null; note "RINGMX DIED during $t size=$z sessions=$s round=$r (exit status $?); see its log"
        RMX_PID=""
    fi
    # drain: the next run must not overlap this target's relaying
    [[ $t == postfix ]] && drain_postfix
    if [[ $t == ringmx && $MODE == relay && $died == 0 ]]; then
        drain_ringmx
        extra="qfirst=$qfirst qleft=$qleft qwait_s=$qwait_s"
        if ((qleft != 0)); then
            note "CHECK: ringmx queue NOT empty ${qwait_s}s after the run: $qleft messages (size=$z sessions=$s round=$r)"
            timeout 20 "$ctl" -s "$tmp/ctl.sock" queue list > "$OUT_DIR/bench-$stamp.queue-$z-$s-$r.txt" 2>&1
        fi
    fi
    c1=$(tree_ticks "$pid")     # CPU including the drain (queue files removed, DONE records...)
    [[ $MODE == relay && $t == ringmx ]] && { local lw=$(( $(log_lines) - l0 )); extra+=" logwarn=$lw"
        ((lw > 0)) && { note "ringmx logged $lw lines during this run:"; tail -n "$((lw < 5 ? lw : 5))" "$tmp/ringmx.log" | sed 's/^/#   ringmx: /' >&2; }; }
    line=$(grep '^RESULT' <<<"$out" | tail -n 1)
    [[ -n $line ]] || line="RESULT status=NO_RESULT size=$z sessions=$s msgs=$m"
    if [[ $t == ringmx && $MODE == accept ]]; then   # everything ringmx accepted stays in its queue (checked at the end)
        local a; a=$(sed -n 's/.* accepted=\([0-9]*\).*/\1/p' <<<"$line"); rmx_accepted=$((rmx_accepted + ${a:-0}))
    fi
    {
        echo "## $t size=$z sessions=$s round=$r"
        grep -v '^RESULT' <<<"$out" | sed 's/^/##   /'
    } >> "$raw.log"
    [[ $r == warmup || $r == profile ]] && return 0
    echo "RUN target=$t round=$r rc=$rc died=$died cpu_all_s=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", d / hz}') $extra ${line#RESULT }" >> "$raw"
    # show progress and anything smtp-source complained about
    sed -n 's/^# \(accepted .*\|sink got .*\|cpu: .*\)/\1/p' <<<"$out" | sed "s/^/#   $t: /" >&2
    [[ -n $extra ]] && note "  ringmx queue: $qfirst right after the run, $qleft after ${qwait_s}s"
    grep -A5 'smtp-source stderr' <<<"$out" | grep -v 'smtp-source stderr' | sed "s/^/#   $t smtp-source: /" >&2
}

t_start=$SECONDS
{
    echo "# bench $stamp mode=$MODE host: $(nproc) CPU, $(uname -r)  size=$SIZE msgs=$MSGS rounds=$ROUNDS sessions='$SESSIONS' cases='$CASES' shards=$SHARDS durability=fsync"
    echo "# ringmx: $RINGMX_BIN (sha1 $(sha1sum "$tmp/ringmx" | cut -c1-12)) port $PORT; git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '+dirty')"
} | tee "$raw" >&2

if ((WARMUP > 0)); then
    note "warm-up: $WARMUP msgs of ${CASES%%:*} bytes per target at 4 sessions (not recorded)"
    for t in "${targets[@]}"; do run_one "$t" "${CASES%%:*}" 4 "$WARMUP" warmup; done
fi

for c in $CASES; do
    IFS=: read -r z s m <<<"$c"; m=${m:-$MSGS}
    for ((r = 1; r <= ROUNDS; r++)); do
        order=("${targets[@]}")
        ((r % 2 == 0)) && order=(ringmx postfix ceiling)     # alternate the order between rounds
        for t in "${order[@]}"; do
            if ((SECONDS - t_start > BUDGET_S)); then
                note "time budget ${BUDGET_S}s spent: skipping $t size=$z sessions=$s round=$r"
                echo "RUN target=$t round=$r rc=-1 died=0 size=$z sessions=$s msgs=$m status=SKIPPED" >> "$raw"
                continue
            fi
            note "size=$z sessions=$s round $r/$ROUNDS: $t (t=$((SECONDS - t_start))s)"
            run_one "$t" "$z" "$s" "$m" "$r"
        done
    done
done

# ------------------------------------------------------------- checks ----
if [[ $MODE == accept && -n $ctl ]] && ringmx_alive && ((crashes == 0)); then
    # every accepted message must be in ringmx's queue (nothing is delivered)
    q=$(queue_count)
    if [[ $q == "$rmx_accepted" ]]; then note "ringmx queue holds $q messages = all accepted ones"
    else note "CHECK: ringmx queue list shows $q messages, smtp-source counted $rmx_accepted accepted"; fi
    echo "# check: ringmx queue list=$q accepted=$rmx_accepted" >> "$raw"
fi
if [[ $MODE == relay ]] && ringmx_alive; then
    q=$(queue_count)
    note "ringmx queue at the end: $q messages; spool: $(du -sh "$tmp/spool" 2>/dev/null | cut -f1)"
    echo "# check: ringmx queue list at the end=$q spool=$(du -sk "$tmp/spool" 2>/dev/null | cut -f1)KB" >> "$raw"
fi
((crashes > 0)) && echo "# ringmx crashes: $crashes" >> "$raw"
if [[ -s $tmp/ringmx.log ]]; then
    note "ringmx stderr: $(wc -l < "$tmp/ringmx.log") lines (saved as $OUT_DIR/bench-$stamp.ringmx.log); last ones:"
    tail -n 5 "$tmp/ringmx.log" | sed 's/^/#   /' >&2
fi

if [[ $MODE == relay ]]; then render_relay_table "$raw"; else render_accept_table "$raw"; fi | tee "$table"
note "raw results: $raw (per-run output: $raw.log)"
note "table:       $table   (total $((SECONDS - t_start))s, spool used $(du -sh "$tmp/spool" 2>/dev/null | cut -f1))"

# ------------------------------------------------------------ profile ----
profile_case() { # profile_case SIZE SESSIONS MSGS: one ringmx run under perf record
    local z=$1 s=$2 m=$3 base=$OUT_DIR/bench-$stamp.perf-$1-$2
    ringmx_alive || start_ringmx || { note "profile: ringmx not running"; return 1; }
    note "profile: perf record -g -p $RMX_PID during one ringmx run, $z bytes x $s sessions, $m msgs"
    perf record -g -F 999 -o "$tmp/perf.data" -p "$RMX_PID" >"$tmp/perf.out" 2>&1 &
    perf_pid=$!
    sleep 0.5
    run_one ringmx "$z" "$s" "$m" profile
    kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null; perf_pid=""
    perf report -i "$tmp/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null > "$base.txt"
    perf report -i "$tmp/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null > "$base-threads.txt"
    perf report -i "$tmp/perf.data" --children --sort symbol --stdio -g caller,0.5,callee --percent-limit 2 2>/dev/null > "$base-callers.txt"
    echo "ringmx CPU by thread and object ($z bytes x $s sessions):"
    grep -E '^ +[0-9]' "$base-threads.txt" | head -n 10
    echo "top symbols of ringmx (self time, $z bytes x $s sessions):"
    grep -E '^ +[0-9]' "$base.txt" | head -n 20
    note "perf reports: $base.txt, $base-threads.txt, $base-callers.txt"
}
if [[ $PROFILE == 1 ]]; then
    command -v perf >/dev/null || { note "PROFILE=1 but perf is not installed (apt-get install linux-perf)"; exit 0; }
    if [[ -z ${PROFILE_CASES:-} ]]; then
        PROFILE_CASES=$( { tr ' ' '\n' <<<"$CASES" | sort -t: -k1,1n -k2,2n | tail -n 1
                           tr ' ' '\n' <<<"$CASES" | sort -t: -k2,2n | tail -n 1; } | awk '!seen[$0]++' | tr '\n' ' ')
    fi
    for c in $PROFILE_CASES; do
        IFS=: read -r z s m <<<"$c"
        profile_case "$z" "$s" "${m:-$MSGS}"
    done
fi
