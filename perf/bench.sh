#!/bin/bash
# perf/bench.sh - ringmx vs Postfix vs the load-path ceiling, side by side in one run.
#
# MODE=relay (default): relay end to end.
#   ceiling  smtp-source straight into smtp-sink (127.0.0.1:2526): the load path
#            without any gateway in between
#   postfix  the Postfix 3.7 peer (127.0.0.1:2525, durable queue, relays to the sink)
#   ringmx   the ringmx under test, on a free loopback port, durability "fsync",
#            route "*" -> smtp://127.0.0.1:2526 (the same sink), spool in a temporary dir
#   The figure that counts is END-TO-END msg/s: arrivals at the sink / time from the
#   start of smtp-source to the last arrival; CPU is per relayed message. After every
#   ringmx run its queue must drain to empty (ringmxctl queue list), checked and reported.
#   Cases (SIZE:SESSIONS[:MSGS]): 100 KB at 4, 8, 16 sessions and 5 KB at 100 sessions.
#   FILTERS=1 adds a fourth target, ringmx-flt: a second ringmx on its own port with the
#   same config plus a realistic filter chain (trusted-CIDR table, HELO regex, sender
#   domain set, recipient verification against a file table of FLT_RCPTS addresses,
#   header regex, add_header; see perf/README.md). It runs next to ringmx in every round,
#   gets the same queue check, and the summary gives ringmx-flt/ringmx (msg/s, CPU/msg).
# MODE=accept: the old accept-only benchmark: ringmx has no
#   routes, keeps what it accepts, and only its ACCEPT rate counts (100 KB, 4/8/16).
# MODE=tls: STARTTLS. 100 KB messages at 16 sessions, one message per
#   connection, sent by perf/tls_load.py (Python; smtp-source cannot do TLS) to
#   ringmx (tls.certificates) and to the Postfix peer, which gets TLS for the run
#   (smtpd_tls_* and a tlsmgr service in its runtime config copy under $PEERS_WORK,
#   restored afterwards). Both relay to the sink. Targets (TLS_TARGETS): postfix,
#   ringmx (STARTTLS) and postfix-plain, ringmx-plain (the same client without
#   STARTTLS). Before the load: ringmx's RSS with IDLE_COUNTS idle sessions, TLS and
#   plaintext, each from a fresh ringmx, per session.
#
# One message per connection; each run is one call of ../shared/peers/bench.sh
# (smtp-source -c), targets alternating inside each of ROUNDS rounds. Prints a table
# of medians and one machine-readable BENCH line per case.
#
# Usage: perf/bench.sh              (from anywhere; paths are relative to the repo)
#        perf/bench.sh --table RAW  re-print the table of a saved raw file (either mode)
# Env (defaults):
#   MODE=relay|accept|tls
#   RINGMX_BIN=build/ringmx  RINGMXCTL_BIN=build/ringmxctl  (both copied to the temp dir first)
#   CASES: SIZE:SESSIONS[:MSGS] ... (relay: "100000:4:3000 100000:8:3000 100000:16:3000 5000:100:12000";
#          accept: SIZE:s for s in SESSIONS; a case without MSGS sends MSGS)
#   SESSIONS="4 8 16"  SIZE=100000  MSGS=2000 (default msgs per run)  ROUNDS=3
#   WARMUP=200 (msgs per target at 4 sessions, not recorded)
#   SHARDS=0 (ringmx shards; 0 = one per online CPU)  PORT= (ringmx port; default: first free from 2530)
#   SEND_TIMEOUT=40 (s per smtp-source run)  E2E_TIMEOUT=20 STALL_TIMEOUT=10 (arrival wait at the sink)
#   QUEUE_WAIT=30 (relay: s to wait for ringmx's queue to drain after a run)
#   FILTERS=1 (relay: add the ringmx-flt target)  FLT_PORT= (its port; default: first free after PORT)
#   FLT_RCPTS=100000 (entries in its recipient table, the address smtp-source sends to among them)
#   BUDGET_S=1200 (relay) / 540 (accept): runs not started by then are skipped
#   PROFILE=1: after the table, one more ringmx run per case in PROFILE_CASES (default: the
#              largest messages at the most sessions, and the case with the most sessions)
#              under `perf record -g -p PID`; CPU by thread and top symbols printed.
#   OUT_DIR=/var/tmp/ringmx-bench (raw results, table, ringmx log, perf report are kept there)
#   BENCH_TMP=/var/tmp (parent of the temporary spool directory; use a real disk, not tmpfs)
#   KEEP_TMP=1 keeps the temporary directory (spool) instead of deleting it.
#   PEERS_DIR=<repo>/../shared/peers
#   tls only: CASES="100000:16:3000"  TLS_TARGETS="postfix ringmx postfix-plain ringmx-plain"
#             IDLE_COUNTS="16 500" (0 skips the memory part)  TLS_DIR=$OUT_DIR/tls (test certificate)
#             TLS_LOAD_OPTS= (extra options for tls_load.py, e.g. "--tls-max 1.2" or "--reuse 100")
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$HERE/../../shared/peers}
[[ -x $PEERS_DIR/bench.sh && -x $PEERS_DIR/peers.sh ]] || { echo "bench.sh: peers harness not found at $PEERS_DIR" >&2; exit 1; }
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)

MODE=${MODE:-relay}
SESSIONS=${SESSIONS:-4 8 16} ROUNDS=${ROUNDS:-3} MSGS=${MSGS:-2000} SIZE=${SIZE:-100000} WARMUP=${WARMUP:-200}
SHARDS=${SHARDS:-0} PROFILE=${PROFILE:-0} QUEUE_WAIT=${QUEUE_WAIT:-30}
FILTERS=${FILTERS:-0} FLT_RCPTS=${FLT_RCPTS:-100000}
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
    if (t ~ /^ringmx/) {     # ringmx, and ringmx-flt (FILTERS=1)
        if (t != "ringmx") flt = 1
        if (f["died"] == 1) good = 0
        if (f["qleft"] != "") { qruns[tk]++; if (f["qleft"] == 0) qempty[tk]++; else good = 0
                                if (f["qfirst"] + 0 > qmax[tk] + 0) qmax[tk] = f["qfirst"] }
        if (f["logwarn"] + 0 > 0) { logw[tk] += f["logwarn"]; good = 0 }
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
    rk = "ringmx" SUBSEP
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
            fmt(pc, 3), fmt(rc, 3), fmt(rcpu, 3), (qempty[rk k] + 0) "/" (qruns[rk k] + 0),
            ok["ceiling" SUBSEP k], runs["ceiling" SUBSEP k], ok["postfix" SUBSEP k], runs["postfix" SUBSEP k], ok["ringmx" SUBSEP k], runs["ringmx" SUBSEP k]
        line[j] = sprintf("BENCH mode=relay size=%d sessions=%d ceiling=%s postfix_e2e=%s ringmx_e2e=%s ringmx_accept=%s postfix_accept=%s postfix_cpu_ms=%s ringmx_cpu_ms=%s ratio_ceiling=%s ratio_cpu=%s ratio_ceiling_paired=%s ratio_cpu_paired=%s postfix_cpu_ms_drain=%s ringmx_cpu_ms_drain=%s sink_cpu_ms_ceiling=%s sink_cpu_ms_ringmx=%s src_cpu_ms_ceiling=%s src_cpu_ms_ringmx=%s busy_pct_ceiling=%s busy_pct_ringmx=%s queue_empty=%d/%d queue_max_first=%d runs_ok=%d/%d",
            cs[1], cs[2], fmt(c, 1), fmt(p, 1), fmt(r, 1), fmt(ra, 1), fmt(med(acc["postfix" SUBSEP k]), 1), fmt(pc, 3), fmt(rc, 3), fmt(rr, 3), fmt(rcpu, 3),
            fmt(med(pr), 3), fmt(med(pcr), 3), fmt(pca, 3), fmt(rca, 3), fmt(med(sink["ceiling" SUBSEP k]), 3), fmt(med(sink["ringmx" SUBSEP k]), 3),
            fmt(med(src["ceiling" SUBSEP k]), 3), fmt(med(src["ringmx" SUBSEP k]), 3), fmt(med(busy["ceiling" SUBSEP k]), 0), fmt(med(busy["ringmx" SUBSEP k]), 0), qempty[rk k], qruns[rk k], qmax[rk k], ok["ringmx" SUBSEP k], runs["ringmx" SUBSEP k])
        verdict[j] = sprintf("%s x %d sessions: ringmx e2e/ceiling %s (aim >= 0.75: %s), ringmx CPU/Postfix CPU %s (aim <= 0.125: %s)", kb(cs[1]), cs[2], fmt(rr, 2),
            (rr < 0 ? "n/a" : (rr >= 0.75 ? "met" : "MISSED")), fmt(rcpu, 3), (rcpu < 0 ? "n/a" : (rcpu <= 0.125 ? "met" : "MISSED")))
    }
    if (flt) {  # FILTERS=1: ringmx with the chain (ringmx-flt) next to ringmx without it
        fk = "ringmx-flt" SUBSEP
        printf "\nFilter chain: ringmx-flt (ringmx + the chain of perf/README.md) vs ringmx (no filters), same run,\n"
        printf "the two next to each other in every round; medians of %d rounds\n\n", rounds
        printf "%5s %4s | %9s %9s %8s %8s | %8s %8s %8s %8s %8s | %9s | %7s | %s\n", "size", "sess", "rmx e2e/s", "flt e2e/s", "flt/rmx", "paired",
            "rmx ms/m", "flt ms/m", "flt/rmx", "paired", "+ms/m", "flt acc/s", "q empty", "runs ok (rmx flt)"
        printf "-----------+---------------------------------------+----------------------------------------------+-----------+---------+------------------\n"
        for (j = 1; j <= m; j++) {
            split(S[j], cs, ":"); k = cs[1] ":" cs[2]
            r = med(e2e[rk k]); f_ = med(e2e[fk k]); rc = med(cpu[rk k]); fc = med(cpu[fk k])
            fr = div(f_, r); fcr = div(fc, rc); fd = (fc < 0 || rc < 0) ? "-" : sprintf("%+.3f", fc - rc)
            pr = ""; pcr = ""
            for (q = 1; q <= rounds; q++) {
                if ((("ringmx-flt", k, q) in E) && (("ringmx", k, q) in E) && E["ringmx", k, q] > 0) pr = pr " " E["ringmx-flt", k, q] / E["ringmx", k, q]
                if ((("ringmx-flt", k, q) in C) && (("ringmx", k, q) in C) && C["ringmx", k, q] > 0) pcr = pcr " " C["ringmx-flt", k, q] / C["ringmx", k, q]
            }
            printf "%5s %4d | %9s %9s %8s %8s | %8s %8s %8s %8s %8s | %9s | %7s | %d/%d %d/%d\n", kb(cs[1]), cs[2], fmt(r, 1), fmt(f_, 1), fmt(fr, 3), fmt(med(pr), 3),
                fmt(rc, 3), fmt(fc, 3), fmt(fcr, 3), fmt(med(pcr), 3), fd, fmt(med(acc[fk k]), 1),
                (qempty[fk k] + 0) "/" (qruns[fk k] + 0), ok[rk k], runs[rk k], ok[fk k], runs[fk k]
            line[j] = line[j] sprintf(" ringmx_flt_e2e=%s ringmx_flt_accept=%s ringmx_flt_cpu_ms=%s ringmx_flt_cpu_ms_drain=%s ratio_flt_e2e=%s ratio_flt_cpu=%s ratio_flt_e2e_paired=%s ratio_flt_cpu_paired=%s busy_pct_ringmx_flt=%s flt_queue_empty=%d/%d flt_queue_max_first=%d flt_runs_ok=%d/%d",
                fmt(f_, 1), fmt(med(acc[fk k]), 1), fmt(fc, 3), fmt(med(cpua[fk k]), 3), fmt(fr, 3), fmt(fcr, 3), fmt(med(pr), 3), fmt(med(pcr), 3),
                fmt(med(busy[fk k]), 0), qempty[fk k], qruns[fk k], qmax[fk k], ok[fk k], runs[fk k])
            fverdict[j] = sprintf("%s x %d sessions: ringmx-flt/ringmx e2e msg/s %s, paired %s (aim >= 0.95, the chain costs under 5 %%: %s); CPU per message %s, paired %s (%s ms)",
                kb(cs[1]), cs[2], fmt(fr, 3), fmt(med(pr), 3), (fr < 0 ? "n/a" : (fr >= 0.95 ? "met" : "MISSED")), fmt(fcr, 3), fmt(med(pcr), 3),
                fd)
        }
    }
    print ""
    print "ceiling/s, e2e/s = messages arrived at smtp-sink / (last arrival - start of smtp-source); rmx acc/s = ringmx"
    print "accept rate (250s / smtp-source wall time); ms/m = CPU of the target process tree per relayed message from"
    print "the start to the last arrival (Postfix: master and all children; ringmx: the process, all threads);"
    print "q empty = ringmx runs after which queue list was empty; rmx/ceil and rmx/pf are ratios of the medians;"
    print "only complete runs (all accepted and arrived, ringmx alive, queue empty) enter the medians."
    if (flt) {
        print "flt = ringmx-flt, the same ringmx config plus the filter chain; flt/rmx are ratios of the medians, paired the"
        print "median of the per-round ratios; +ms/m = CPU per message the chain adds (flt ms/m - rmx ms/m)."
    }
    for (j = 1; j <= m; j++) print verdict[j]
    if (flt) for (j = 1; j <= m; j++) print fverdict[j]
    for (x in bad) { split(x, kk, SUBSEP); printf "note: %s %s non-OK runs:%s\n", kk[1], kk[2], bad[x] }
    for (x in logw) { split(x, kk, SUBSEP); printf "note: %s wrote %d log lines (level warn) during the %s runs\n", kk[1], logw[x], kk[2] }
    print ""
    for (j = 1; j <= m; j++) print line[j]
}' "$1"
}

# TLS-mode raw lines: "RUN target=T round=R ... accept_rate= e2e_rate= peer_cpu_s= client_cpu_s= ... status=" and
# "MEM kind=tls|plain n=N ... per_session_kb=.."
render_tls_table() { # render_tls_table RAWFILE
awk -v cases="$(sed -n "s/.* cases='\([^']*\)'.*/\1/p" "$1" | head -1)" \
    -v targets="$(sed -n "s/.* targets='\([^']*\)'.*/\1/p" "$1" | head -1)" \
    -v rounds="$(sed -n 's/^# bench .* rounds=\([0-9]*\).*/\1/p' "$1" | head -1)" '
function med(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return -1
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt(v, d) { return (v < 0) ? "-" : sprintf("%." d "f", v) }
function div(a, b) { return (a < 0 || b <= 0) ? -1 : a / b }
function sub_(a, b) { return (a < 0 || b < 0) ? -1 : a - b }
function sgn(v, d) { return (v == -1) ? "-" : sprintf("%+." d "f", v) }
function kb(sz) { return (sz >= 1000) ? sprintf("%gK", sz / 1000) : sz }
function paired(a, b, k,   q, l) { l = ""
    for (q = 1; q <= rounds; q++) if (((a, k, q) in X) && ((b, k, q) in X) && X[b, k, q] > 0) l = l " " X[a, k, q] / X[b, k, q]
    return med(l) }
function pairedc(a, b, k,   q, l) { l = ""
    for (q = 1; q <= rounds; q++) if (((a, k, q) in C) && ((b, k, q) in C) && C[b, k, q] > 0) l = l " " C[a, k, q] / C[b, k, q]
    return med(l) }
/^# probe / { probe[++np] = substr($0, 3) }
/^MEM / {
    delete f
    for (i = 2; i <= NF; i++) { p = index($i, "="); if (p) f[substr($i, 1, p - 1)] = substr($i, p + 1) }
    mem[++nm] = sprintf("  %-5s %4d idle sessions: VmRSS %d -> %d kB = %s kB per session (RssAnon %s kB per session); opened %d, established at the server %d",
        f["kind"], f["n"], f["rss0_kb"], f["rss_kb"], f["per_session_kb"], f["anon_per_session_kb"], f["opened"], f["established"])
    M[f["kind"], f["n"]] = f["per_session_kb"]; mn[f["n"]] = 1
}
/^RUN / {
    delete f
    for (i = 2; i <= NF; i++) { p = index($i, "="); if (p) f[substr($i, 1, p - 1)] = substr($i, p + 1) }
    t = f["target"]; k = f["size"] ":" f["sessions"]; tk = t SUBSEP k; q = f["round"]
    runs[tk]++
    if (f["status"] != "OK") { bad[tk] = bad[tk] " r" q ":" f["status"]; next }
    ok[tk]++
    n = f["arrived"]
    X[t, k, q] = f["e2e_rate"]; e2e[tk] = e2e[tk] " " f["e2e_rate"]; acc[tk] = acc[tk] " " f["accept_rate"]
    if (n > 0) {
        C[t, k, q] = 1000 * f["peer_cpu_s"] / n; cpu[tk] = cpu[tk] " " C[t, k, q]
        cpua[tk] = cpua[tk] " " 1000 * f["cpu_all_s"] / n
        cli[tk] = cli[tk] " " 1000 * f["client_cpu_s"] / f["accepted"]
        sink[tk] = sink[tk] " " 1000 * f["sink_cpu_s"] / n
    }
    busy[tk] = busy[tk] " " f["busy_pct"]; tls[tk] = f["tls"]
}
END {
    nt = split(targets, T, " "); m = split(cases, S, " ")
    printf "\nTLS: ringmx vs Postfix over STARTTLS, both relaying to smtp-sink; client perf/tls_load.py (Python, one\n"
    printf "worker process per session, one message per connection, full handshake each); fsync on both; medians of %d rounds\n", rounds
    for (i = 1; i <= np; i++) print "  " probe[i]
    for (j = 1; j <= m; j++) {
        split(S[j], cs, ":"); k = cs[1] ":" cs[2]
        printf "\n%s x %d sessions\n", kb(cs[1]), cs[2]
        printf "%-14s | %9s %9s | %9s %9s | %9s %9s | %5s | %s\n", "target", "acc msg/s", "e2e msg/s", "cpu ms/m", "+drain", "client", "sink", "busy", "runs ok"
        printf "---------------+---------------------+---------------------+---------------------+-------+--------\n"
        for (i = 1; i <= nt; i++) {
            tk = T[i] SUBSEP k
            printf "%-14s | %9s %9s | %9s %9s | %9s %9s | %4s%% | %d/%d\n", T[i], fmt(med(acc[tk]), 1), fmt(med(e2e[tk]), 1), fmt(med(cpu[tk]), 3), fmt(med(cpua[tk]), 3),
                fmt(med(cli[tk]), 3), fmt(med(sink[tk]), 3), fmt(med(busy[tk]), 0), ok[tk], runs[tk]
        }
        re = med(e2e["ringmx" SUBSEP k]); pe = med(e2e["postfix" SUBSEP k]); ra = med(acc["ringmx" SUBSEP k]); pa = med(acc["postfix" SUBSEP k])
        rc = med(cpu["ringmx" SUBSEP k]); pc = med(cpu["postfix" SUBSEP k])
        rpe = med(e2e["ringmx-plain" SUBSEP k]); ppe = med(e2e["postfix-plain" SUBSEP k]); rpc = med(cpu["ringmx-plain" SUBSEP k]); ppc = med(cpu["postfix-plain" SUBSEP k])
        rcl = med(cli["ringmx" SUBSEP k]); pcl = med(cli["postfix" SUBSEP k]); rpcl = med(cli["ringmx-plain" SUBSEP k]); ppcl = med(cli["postfix-plain" SUBSEP k])
        printf "\nringmx / Postfix over TLS:  msg/s %s (paired %s; accepted %s), CPU per message %s (paired %s)\n",
            fmt(div(re, pe), 2), fmt(paired("ringmx", "postfix", k), 2), fmt(div(ra, pa), 2), fmt(div(rc, pc), 3), fmt(pairedc("ringmx", "postfix", k), 3)
        if (rpe >= 0 && ppe >= 0)
            printf "ringmx / Postfix plaintext: msg/s %s (paired %s), CPU per message %s (paired %s)\n",
                fmt(div(rpe, ppe), 2), fmt(paired("ringmx-plain", "postfix-plain", k), 2), fmt(div(rpc, ppc), 3), fmt(pairedc("ringmx-plain", "postfix-plain", k), 3)
        if (rpc >= 0 || ppc >= 0)
            printf "what TLS adds per message (TLS - plaintext CPU): Postfix %s ms, ringmx %s ms; the client %s ms / %s ms\n",
                sgn(sub_(pc, ppc), 3), sgn(sub_(rc, rpc), 3), sgn(sub_(pcl, ppcl), 3), sgn(sub_(rcl, rpcl), 3)
        line[j] = sprintf("BENCH mode=tls size=%d sessions=%d postfix_e2e=%s ringmx_e2e=%s postfix_accept=%s ringmx_accept=%s postfix_cpu_ms=%s ringmx_cpu_ms=%s ratio_rate=%s ratio_cpu=%s ratio_rate_paired=%s ratio_cpu_paired=%s client_cpu_ms_postfix=%s client_cpu_ms_ringmx=%s busy_pct_postfix=%s busy_pct_ringmx=%s postfix_plain_e2e=%s ringmx_plain_e2e=%s postfix_plain_cpu_ms=%s ringmx_plain_cpu_ms=%s runs_ok=%d/%d,%d/%d",
            cs[1], cs[2], fmt(pe, 1), fmt(re, 1), fmt(pa, 1), fmt(ra, 1), fmt(pc, 3), fmt(rc, 3), fmt(div(re, pe), 3), fmt(div(rc, pc), 3),
            fmt(paired("ringmx", "postfix", k), 3), fmt(pairedc("ringmx", "postfix", k), 3), fmt(pcl, 3), fmt(rcl, 3),
            fmt(med(busy["postfix" SUBSEP k]), 0), fmt(med(busy["ringmx" SUBSEP k]), 0), fmt(ppe, 1), fmt(rpe, 1), fmt(ppc, 3), fmt(rpc, 3),
            ok["postfix" SUBSEP k], runs["postfix" SUBSEP k], ok["ringmx" SUBSEP k], runs["ringmx" SUBSEP k])
    }
    print ""
    print "acc msg/s = messages the client got 250 for / client wall time; e2e msg/s = arrivals at smtp-sink / (last"
    print "arrival - client start); cpu ms/m = CPU of the target process tree (Postfix: master and all children;"
    print "ringmx: the process, all threads) from the start to the last arrival per relayed message, +drain until its"
    print "queue was empty; client = tls_load.py (all workers) per accepted message; sink = smtp-sink per message;"
    print "busy = whole machine (2 cores = 100%) while the client ran."
    print "Only complete runs (all accepted and arrived, ringmx alive, queue empty, nothing in its log) enter the medians."
    print "The client is Python: at 16 sessions on 2 cores it needs more CPU per message than either server, so the"
    print "msg/s ratio is bounded by the client (see busy and client); CPU per message is the fairer comparison."
    for (x in bad) { split(x, kk, SUBSEP); printf "note: %s %s non-OK runs:%s\n", kk[1], kk[2], bad[x] }
    if (nm) {
        print "\nringmx memory per idle session (VmRSS with N sessions open and idle - VmRSS before, / N; fresh ringmx each):"
        for (i = 1; i <= nm; i++) print mem[i]
    }
    print ""
    for (j = 1; j <= m; j++) print line[j]
    memline = "BENCH mode=tls-memory"
    for (x in mn) memline = memline sprintf(" tls_kb_per_session_%d=%s plain_kb_per_session_%d=%s", x, M["tls", x], x, M["plain", x])
    if (nm) print memline
}' "$1"
}

if [[ ${1:-} == --table ]]; then
    if grep -q '^# bench .* mode=relay' "${2:?raw file}"; then render_relay_table "$2"
    elif grep -q '^# bench .* mode=tls' "$2"; then render_tls_table "$2"
    else render_accept_table "$2"; fi
    exit
fi
(($# == 0)) || die "usage: $0 [--table RAWFILE]   (parameters via environment, see the header)"
case $MODE in
    relay) CASES=${CASES:-100000:4:3000 100000:8:3000 100000:16:3000 5000:100:12000}; BUDGET_S=${BUDGET_S:-1200} ;;
    accept) CASES=""; for s in $SESSIONS; do CASES+="$SIZE:$s "; done; CASES=${CASES% }; BUDGET_S=${BUDGET_S:-540} ;;
    tls) CASES=${CASES:-100000:16:3000}; BUDGET_S=${BUDGET_S:-600} ;;
    *) die "MODE must be relay, accept or tls" ;;
esac
for c in $CASES; do [[ $c =~ ^[0-9]+:[0-9]+(:[0-9]+)?$ ]] || die "bad case '$c' in CASES (SIZE:SESSIONS[:MSGS])"; done
[[ $FILTERS == 0 || $FILTERS == 1 ]] || die "FILTERS must be 0 or 1"
if [[ $FILTERS == 1 ]]; then
    [[ $MODE == relay ]] || die "FILTERS=1 is for MODE=relay (the ringmx-flt target)"
    [[ $FLT_RCPTS =~ ^[0-9]+$ ]] && ((FLT_RCPTS >= 1)) || die "FLT_RCPTS must be a positive number"
    command -v python3 >/dev/null || die "python3 missing (FILTERS=1 writes ringmx-flt's config with it)"
fi

# ---------------------------------------------------------------- setup ----
RINGMX_BIN=${RINGMX_BIN:-$REPO/build/ringmx}
RINGMXCTL_BIN=${RINGMXCTL_BIN:-$REPO/build/ringmxctl}
[[ -x $RINGMX_BIN ]] || die "no ringmx binary at $RINGMX_BIN (meson compile -C build, or set RINGMX_BIN)"
[[ $MODE != accept && ! -x $RINGMXCTL_BIN ]] && die "no ringmxctl at $RINGMXCTL_BIN (needed for the queue check)"
if [[ $MODE == tls ]]; then
    command -v python3 >/dev/null || die "python3 missing (the TLS load client is perf/tls_load.py)"
    command -v openssl >/dev/null || die "openssl missing (makes the test certificate)"
    command -v postconf >/dev/null || die "postconf missing (Debian package postfix; run $PEERS_DIR/setup.sh)"
else
    command -v smtp-source >/dev/null || die "smtp-source missing (Debian package postfix; run $PEERS_DIR/setup.sh)"
fi

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

RMX_PID="" FLT_PID="" started_peers=() crashes=0 perf_pid=""
cleanup() {
    local i
    if [[ -n $perf_pid ]] && kill -0 "$perf_pid" 2>/dev/null; then kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null; fi
    stop_ringmx
    [[ $FILTERS == 1 ]] && stop_ringmx ringmx-flt
    for ((i = ${#started_peers[@]} - 1; i >= 0; i--)); do "$PEERS_DIR/peers.sh" stop "${started_peers[i]}" >/dev/null 2>&1; done
    declare -F postfix_tls_off >/dev/null && postfix_tls_off
    [[ -s $tmp/ringmx.log ]] && cp "$tmp/ringmx.log" "$OUT_DIR/bench-$stamp.ringmx.log"
    [[ -s $tmp/ringmx-flt.log ]] && cp "$tmp/ringmx-flt.log" "$OUT_DIR/bench-$stamp.ringmx-flt.log"
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
if [[ $FILTERS == 1 ]]; then
    if [[ -z ${FLT_PORT:-} ]]; then
        for ((FLT_PORT = PORT + 1; FLT_PORT < 2600; FLT_PORT++)); do port_listening "$FLT_PORT" || break; done
        ((FLT_PORT < 2600)) || die "no free port for ringmx-flt in $((PORT + 1))-2599"
    fi
    [[ $FLT_PORT == "$PORT" ]] && die "FLT_PORT must differ from PORT ($PORT)"
    port_listening "$FLT_PORT" && die "port $FLT_PORT (ringmx-flt) is busy"
fi

# relay: every domain goes to the sink; connections_per_ip is raised because
# smtp-source opens up to 100 sessions from one address (Postfix exempts
# $mynetworks from its per-client limit). delivery.* keeps its defaults
# (20 connections to the route in all, as Postfix's destination concurrency).
routes=""
[[ $MODE != accept ]] && routes='"routes": [{"domains": ["*"], "to": "smtp://127.0.0.1:'$SINK_PORT'"}],'
# tls: a self-signed ECDSA P-256 certificate for mx.test, the same for ringmx and Postfix
tlscfg=""
if [[ $MODE == tls ]]; then
    TLS_DIR=${TLS_DIR:-$OUT_DIR/tls}
    if [[ ! -s $TLS_DIR/cert.pem || ! -s $TLS_DIR/key.pem ]]; then
        mkdir -p "$TLS_DIR" && chmod 755 "$TLS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" \
            -days 3650 -subj /CN=mx.test -addext subjectAltName=DNS:mx.test >"$tmp/openssl.out" 2>&1 \
            || die "cannot make a test certificate: $(cat "$tmp/openssl.out")"
        chmod 644 "$TLS_DIR/cert.pem"; chmod 600 "$TLS_DIR/key.pem"
    fi
    tlscfg='"tls": {"certificates": [{"cert": "'$TLS_DIR/cert.pem'", "key": "'$TLS_DIR/key.pem'", "names": ["mx.test"]}]},'
fi
cat > "$tmp/ringmx.json" <<JSON
{
  "hostname": "bench.test",
  "shards": $SHARDS,
  "listeners": [{"name": "bench", "address": "127.0.0.1:$PORT"}],
  "relay": {"domains": ["${RCPT#*@}"]},
  $routes
  $tlscfg
  "limits": {"connections_per_ip": 1000},
  "spool": {"path": "$tmp/spool", "durability": "fsync"},
  "control": {"socket": "$tmp/ctl.sock"},
  "log": {"level": "warn"}
}
JSON
"$tmp/ringmx" --check-config "$tmp/ringmx.json" >"$tmp/check.out" 2>&1 || die "config rejected: $(cat "$tmp/check.out")"

# ringmx instances: "ringmx" (the config above) and, with FILTERS=1, "ringmx-flt" (the
# same plus a filter chain). Each has its own config, port, spool, control socket, log
# and PID variable; the functions below take the instance name (default ringmx).
declare -A RMX_CFG=([ringmx]=$tmp/ringmx.json) RMX_LOG=([ringmx]=$tmp/ringmx.log) \
    RMX_SOCK=([ringmx]=$tmp/ctl.sock) RMX_PORT=([ringmx]=$PORT)
declare -A PID_VAR=([ringmx]=RMX_PID [ringmx-flt]=FLT_PID)   # for namerefs: local -n pid=${PID_VAR[$inst]}

start_ringmx() { # start_ringmx [INSTANCE]: 0 once it listens on its port
    local inst=${1:-ringmx} i
    local -n rpid=${PID_VAR[$inst]}
    "$tmp/ringmx" -c "${RMX_CFG[$inst]}" </dev/null >>"${RMX_LOG[$inst]}" 2>&1 &
    rpid=$!
    for ((i = 0; i < 100; i++)); do
        kill -0 "$rpid" 2>/dev/null || { rpid=""; return 1; }
        ss -ltnpH "sport = :${RMX_PORT[$inst]}" 2>/dev/null | grep -q "pid=$rpid," && return 0
        sleep 0.1
    done
    return 1
}
stop_ringmx() { # stop_ringmx [INSTANCE]
    local inst=${1:-ringmx} i
    local -n rpid=${PID_VAR[$inst]}
    [[ -n $rpid ]] || return 0
    if kill -0 "$rpid" 2>/dev/null; then
        kill -TERM "$rpid"
        for ((i = 0; i < 100; i++)); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$rpid" 2>/dev/null && { note "$inst (pid $rpid) ignored SIGTERM for 10s: SIGKILL"; kill -KILL "$rpid"; }
    fi
    wait "$rpid" 2>/dev/null; local rc=$?
    ((rc != 0 && rc != 143)) && note "$inst pid $rpid exited with status $rc"
    rpid=""
}
ringmx_alive() { local -n rpid=${PID_VAR[${1:-ringmx}]}; [[ -n $rpid ]] && kill -0 "$rpid" 2>/dev/null; }
log_lines() { local f=${RMX_LOG[${1:-ringmx}]}; [[ -f $f ]] && wc -l < "$f" || echo 0; }
queue_count() { # queue_count [INSTANCE]: messages in its queue (one line each after ringmxctl's "OK"), or -1
    local out; out=$(timeout 20 "$ctl" -s "${RMX_SOCK[${1:-ringmx}]}" queue list 2>&1) || { echo -1; return; }
    grep -c . <<<"$out"
}

# ------------------------------------------- FILTERS=1: ringmx-flt ----
# The same config plus a chain of the kind a gateway in front of a mail store
# runs (issue 11, "Benchmark"), built so that smtp-source's transaction (HELO
# <hostname>, MAIL FROM:<$FROM>, RCPT TO:<$RCPT>, headers From/To/Date/Message-Id)
# passes every rule and no rule decides: every test is evaluated.
#   connect  client_ip in "trusted" (inline: 300 IPv4 /24 and 40 IPv6 /48, none
#            holding 127.0.0.1) -> tag trusted
#   helo     tag trusted -> accept; HELO regex (bare IP, localhost, IP-in-name) -> reject
#   mail     sender_domain in a set of 300 (200 names, 100 *.suffixes) -> reject
#   rcpt     tag trusted -> accept; rcpt_domain $RCPT's domain and rcpt not in "valid"
#            (file: FLT_RCPTS addresses, $RCPT among them) -> reject 550 5.1.1, tarpit 1 s
#   data     header From regex -> reject; add_header X-Gateway
if [[ $FILTERS == 1 ]]; then
    RMX_CFG[ringmx-flt]=$tmp/ringmx-flt.json RMX_LOG[ringmx-flt]=$tmp/ringmx-flt.log
    RMX_SOCK[ringmx-flt]=$tmp/ctl-flt.sock RMX_PORT[ringmx-flt]=$FLT_PORT
    python3 - "$tmp/ringmx.json" "$tmp/ringmx-flt.json" "$tmp/valid-rcpts" "$FLT_PORT" "$tmp" "$RCPT" "$FLT_RCPTS" <<'PY' \
        || die "cannot write the ringmx-flt config"
import json, sys
base, out, rcpts, port, tmp, rcpt, n = sys.argv[1:]
n, dom = int(n), rcpt.split("@", 1)[1]
cfg = json.load(open(base))
cfg["listeners"][0]["address"] = "127.0.0.1:" + port
cfg["spool"]["path"] = tmp + "/spool-flt"
cfg["control"]["socket"] = tmp + "/ctl-flt.sock"
# n distinct addresses at the relay domain (first.lastN, like a directory export), rcpt among them
first = ["anna", "ben", "carla", "david", "eva", "felix", "greta", "hugo", "ines", "jonas",
         "karin", "lukas", "mia", "nils", "olga", "paul", "rita", "sven", "tina", "uwe"]
last = ["adler", "bauer", "berg", "braun", "dietrich", "engel", "fischer", "frank", "graf", "hahn",
        "hartmann", "hoffmann", "jung", "kaiser", "keller", "klein", "koch", "koenig", "krause", "kuhn",
        "lang", "lehmann", "lorenz", "maier", "meyer", "moeller", "neumann", "otto", "peters", "pohl",
        "richter", "roth", "sauer", "schmidt", "schneider", "schulz", "schwarz", "seidel", "sommer", "stein",
        "vogel", "wagner", "walter", "weber", "werner", "winkler", "wolf", "ziegler", "zimmer", "zuse"]
with open(rcpts, "w") as f:
    f.write("# ringmx-flt: valid recipients (perf/bench.sh FILTERS=1)\n")
    for i in range(n - 1):
        f.write("%s.%s%s@%s\n" % (first[i % 20], last[i // 20 % 50], i // 1000 or "", dom))
    f.write(rcpt + "\n")
v4, seen, i = [], set(), 0
while len(v4) < 300:                   # scattered /24s: few of them merge into one interval
    a, b, c = 11 + i * 53 % 190, i * 97 % 256, i * 29 % 256
    i += 1
    if a != 127 and (a, b, c) not in seen:
        seen.add((a, b, c)); v4.append("%d.%d.%d.0/24" % (a, b, c))
v6 = ["2001:db8:%x::/48" % (j * 3 + 1) for j in range(40)]
senders = ["spam%03d.example" % j for j in range(200)] + ["*.junk%03d.example" % j for j in range(100)]
cfg["tables"] = {"trusted": {"inline": v4 + v6}, "valid": {"file": rcpts}}
cfg["filters"] = {
    "connect": [{"if": {"client_ip": {"table": "trusted"}}, "then": {"tag": "trusted"}}],
    "helo": [{"if": {"tag": "trusted"}, "then": "accept"},
             {"if": {"helo": {"regex": r"(?i)^(\[?[0-9.]+\]?|localhost(\.localdomain)?|.*[0-9]+[-.][0-9]+[-.][0-9]+[-.][0-9]+.*)$"}},
              "then": {"reject": "550 5.7.1 <%{helo}>: HELO refused"}}],
    "mail": [{"if": {"sender_domain": senders}, "then": {"reject": "550 5.7.1 <%{sender}>: sender refused"}}],
    "rcpt": [{"if": {"tag": "trusted"}, "then": "accept"},
             {"if": {"rcpt_domain": dom, "not": {"rcpt": {"table": "valid"}}},
              "then": {"reject": "550 5.1.1 no such user", "tarpit_ms": 1000}}],
    "data": [{"if": {"header": {"name": "From", "regex": r"(?i)@([a-z0-9-]+\.)*(spam|junk)[0-9]*\.example>?$"}},
              "then": {"reject": "550 5.7.1 message refused"}},
             {"add_header": {"name": "X-Gateway", "value": "ringmx %{listener} %{qid}"}}],
}
json.dump(cfg, open(out, "w"), indent=1)
PY
    n=$(grep -vc '^#' "$tmp/valid-rcpts")
    ((n == FLT_RCPTS)) && grep -qxF "$RCPT" "$tmp/valid-rcpts" \
        || die "recipient table $tmp/valid-rcpts: $n entries (want $FLT_RCPTS) or $RCPT missing"
    "$tmp/ringmx" --check-config "$tmp/ringmx-flt.json" >"$tmp/check-flt.out" 2>&1 \
        || die "ringmx-flt config rejected: $(cat "$tmp/check-flt.out")"
fi

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

# ------------------------------------------------ tls: Postfix with TLS ----
# The Postfix peer gets TLS for the run by editing ITS runtime config copy
# ($PEERS_WORK/conf/postfix, made by setup.sh; ../shared/peers is never touched):
#   main.cf:   smtpd_tls_cert_file, smtpd_tls_key_file = the test certificate,
#              smtpd_tls_security_level = may (it is "none" there)
#   master.cf: a tlsmgr service (without it Postfix 3.7's smtpd logs "no entropy
#              for TLS key generation: disabling TLS support" and STARTTLS fails)
# Both files are saved first and put back byte for byte (cp -p) on exit; a
# running Postfix is reloaded after each change. A marker file in $OUT_DIR says
# what to undo if this script is killed before it can restore them.
PF_CONF="" pf_backup="" pf_marker="" pf_was_running=""
postfix_tls_on() {
    PF_CONF=$(source "$PEERS_DIR/lib.sh" >/dev/null 2>&1; echo "$POSTFIX_CONF")
    [[ -r $PF_CONF/main.cf && -r $PF_CONF/master.cf ]] || die "no Postfix runtime config at '$PF_CONF' (run $PEERS_DIR/setup.sh)"
    pf_backup=$OUT_DIR/bench-$stamp.postfix-conf.orig
    mkdir -p "$pf_backup" && cp -p "$PF_CONF/main.cf" "$PF_CONF/master.cf" "$pf_backup/" || die "cannot save $PF_CONF"
    pf_marker=$OUT_DIR/POSTFIX-CONFIG-MODIFIED-bench-$stamp
    printf '%s\n' "perf/bench.sh MODE=tls (pid $$) changed $PF_CONF/main.cf and master.cf (TLS for the run)." \
        "If this file is still here, the run did not restore them. To restore:" \
        "  cp -p $pf_backup/main.cf $pf_backup/master.cf $PF_CONF/ && postfix -c $PF_CONF reload  # (reload only if running)" > "$pf_marker"
    note "Postfix peer: enabling TLS in its runtime config $PF_CONF (saved to $pf_backup; restored on exit)"
    note "  was: $(postconf -c "$PF_CONF" smtpd_tls_security_level smtpd_tls_cert_file smtpd_tls_key_file 2>&1 | tr '\n' ';')"
    postconf -c "$PF_CONF" -e "smtpd_tls_cert_file=$TLS_DIR/cert.pem" "smtpd_tls_key_file=$TLS_DIR/key.pem" \
        smtpd_tls_security_level=may || die "postconf -e failed"
    if ! postconf -c "$PF_CONF" -M tlsmgr/unix 2>/dev/null | grep -q tlsmgr; then
        postconf -c "$PF_CONF" -M tlsmgr/unix='tlsmgr unix - - n 1000? 1 tlsmgr' || die "postconf -M tlsmgr failed"
    fi
    note "  now: $(postconf -c "$PF_CONF" smtpd_tls_security_level smtpd_tls_cert_file smtpd_tls_key_file | tr '\n' ';') $(postconf -c "$PF_CONF" -M tlsmgr/unix)"
    pf_was_running=$("$PEERS_DIR/peers.sh" pid postfix)
    if [[ -n $pf_was_running ]]; then
        note "  Postfix was already running (pid $pf_was_running, not started by this script): postfix reload"
        postfix -c "$PF_CONF" reload >/dev/null 2>&1 || note "  postfix reload FAILED"
        sleep 1
    fi
}
postfix_tls_off() {
    [[ -n $pf_backup && -r $pf_backup/main.cf ]] || return 0
    if cmp -s "$pf_backup/main.cf" "$PF_CONF/main.cf" && cmp -s "$pf_backup/master.cf" "$PF_CONF/master.cf"; then
        note "Postfix config $PF_CONF unchanged"
    elif cp -p "$pf_backup/main.cf" "$pf_backup/master.cf" "$PF_CONF/" && cmp -s "$pf_backup/main.cf" "$PF_CONF/main.cf" \
            && cmp -s "$pf_backup/master.cf" "$PF_CONF/master.cf"; then
        note "Postfix config restored: $PF_CONF/main.cf and master.cf are byte-identical to the saved copies again (smtpd_tls_security_level=$(postconf -c "$PF_CONF" -h smtpd_tls_security_level))"
        local p; p=$("$PEERS_DIR/peers.sh" pid postfix)
        if [[ -n $p ]]; then postfix -c "$PF_CONF" reload >/dev/null 2>&1 && note "  running Postfix (pid $p) reloaded"; fi
    else
        note "WARNING: could not restore $PF_CONF from $pf_backup; see $pf_marker"; return 1
    fi
    rm -f "$pf_marker"; pf_backup=""
}
[[ $MODE == tls ]] && postfix_tls_on

ensure_peer sink || die "cannot start smtp-sink (peers.sh start sink)"
ensure_peer postfix || die "cannot start the Postfix peer (run $PEERS_DIR/setup.sh as root first)"
start_ringmx || die "ringmx did not come up on 127.0.0.1:$PORT: $(tail -n 5 "$tmp/ringmx.log")"
note "ringmx $(basename "$RINGMX_BIN") pid $RMX_PID on 127.0.0.1:$PORT, mode=$MODE, shards=$SHARDS, spool $tmp/spool ($(stat -f -c %T "$tmp"))"
if [[ $FILTERS == 1 ]]; then
    start_ringmx ringmx-flt || die "ringmx-flt did not come up on 127.0.0.1:$FLT_PORT: $(tail -n 5 "$tmp/ringmx-flt.log")"
    note "ringmx-flt pid $FLT_PID on 127.0.0.1:$FLT_PORT: the same plus the filter chain ($FLT_RCPTS recipients in its table), spool $tmp/spool-flt"
    cp "$tmp/ringmx-flt.json" "$OUT_DIR/bench-$stamp.ringmx-flt.json"
    # The chain must let smtp-source's transaction through with no rule deciding
    # (every test evaluated, nothing refused), and must refuse an unknown recipient.
    # smtp-source says HELO with the machine's hostname.
    flt_ok=$(timeout 20 "$ctl" -s "${RMX_SOCK[ringmx-flt]}" filter explain --listener bench --ip 127.0.0.1 \
        --helo "$(hostname)" --from "$FROM" --rcpt "$RCPT" 2>&1) || die "ringmx-flt: filter explain failed: $flt_ok"
    flt_bad=$(timeout 20 "$ctl" -s "${RMX_SOCK[ringmx-flt]}" filter explain --listener bench --ip 127.0.0.1 \
        --helo "$(hostname)" --from "$FROM" --rcpt "nobody.bench@${RCPT#*@}" 2>&1) || die "ringmx-flt: filter explain failed: $flt_bad"
    grep -q '(filters\.' <<<"$flt_ok" && die "ringmx-flt: a rule decides smtp-source's transaction: $flt_ok"
    grep -q '^rcpt .*reject (filters\.rcpt' <<<"$flt_bad" || die "ringmx-flt: an unknown recipient is not refused: $flt_bad"
fi

# --------------------------------------------------------------- runs ----
targets=(ceiling postfix ringmx)
[[ $FILTERS == 1 ]] && targets+=(ringmx-flt)
port_of() { case $1 in ceiling) echo $SINK_PORT ;; postfix) echo $POSTFIX_PORT ;; ringmx*) echo "${RMX_PORT[$1]}" ;; esac; }
pid_of() { case $1 in ceiling) "$PEERS_DIR/peers.sh" pid sink ;; postfix) "$PEERS_DIR/peers.sh" pid postfix ;; ringmx) echo "$RMX_PID" ;; ringmx-flt) echo "$FLT_PID" ;; esac; }
rmx_accepted=0

drain_postfix() { # wait (bounded) until Postfix's queue is empty, so its relaying does not overlap the next run
    local i
    for ((i = 0; i < 300; i++)); do (( $("$PEERS_DIR/peers.sh" qsize postfix) == 0 )) && return 0; sleep 0.1; done
    note "postfix: queue not empty after 30s ($("$PEERS_DIR/peers.sh" qsize postfix) left)"
}

# relay: after a ringmx run, wait (up to QUEUE_WAIT s) for `queue list` to be empty.
# Sets qfirst (count right after the run), qleft (count at the end), qwait_s.
drain_ringmx() { # drain_ringmx [INSTANCE]
    local inst=${1:-ringmx} t0=$EPOCHREALTIME n
    qfirst=$(queue_count "$inst"); n=$qfirst
    while ((n != 0)) && ringmx_alive "$inst"; do
        awk -v a="$t0" -v b="$EPOCHREALTIME" -v w="$QUEUE_WAIT" 'BEGIN{exit !(b - a > w)}' && break
        sleep 0.1; n=$(queue_count "$inst")
    done
    qleft=$n
    qwait_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')
}

run_one() { # run_one TARGET SIZE SESSIONS MSGS ROUND -> appends a RUN line to $raw (unless ROUND=warmup/profile)
    local t=$1 z=$2 s=$3 m=$4 r=$5 out rc line died=0 env=() pid c0 c1 l0 extra=""
    if [[ $t == ringmx* ]]; then    # ringmx, or ringmx-flt (FILTERS=1)
        ringmx_alive "$t" || { note "$t not running before a run: restarting"; start_ringmx "$t" || note "$t restart FAILED"; }
    fi
    pid=$(pid_of "$t")
    case $t in
        # accept mode: ringmx keeps its mail, so do not wait for arrivals at the sink
        ringmx) if [[ $MODE == accept ]]; then env=(E2E_TIMEOUT=0 STALL_TIMEOUT=1); else env=(E2E_TIMEOUT="$E2E_TIMEOUT" STALL_TIMEOUT="$STALL_TIMEOUT"); fi ;;
        *) env=(E2E_TIMEOUT="$E2E_TIMEOUT" STALL_TIMEOUT="$STALL_TIMEOUT") ;;
    esac
    [[ $t != postfix ]] && env+=(PEER_PID="$pid")
    [[ $t == ringmx* ]] && l0=$(log_lines "$t")
    c0=$(tree_ticks "$pid")
    out=$(env "${env[@]}" SEND_TIMEOUT="$SEND_TIMEOUT" FROM="$FROM" RCPT="$RCPT" \
        "$PEERS_DIR/bench.sh" "$(port_of "$t")" "$s" "$m" "$z" 2>&1); rc=$?
    if [[ $t == ringmx* ]] && ! ringmx_alive "$t"; then
        local -n rpid=${PID_VAR[$t]}
        died=1; crashes=$((crashes + 1))
        wait "$rpid" 2>/dev/null; note "RINGMX DIED during $t size=$z sessions=$s round=$r (exit status $?); see its log"
        rpid=""
    fi
    # drain: the next run must not overlap this target's relaying
    [[ $t == postfix ]] && drain_postfix
    if [[ $t == ringmx* && $MODE == relay && $died == 0 ]]; then
        drain_ringmx "$t"
        extra="qfirst=$qfirst qleft=$qleft qwait_s=$qwait_s"
        if ((qleft != 0)); then
            local qname=queue-$z-$s-$r.txt; [[ $t != ringmx ]] && qname=queue-$t-$z-$s-$r.txt
            note "CHECK: $t queue NOT empty ${qwait_s}s after the run: $qleft messages (size=$z sessions=$s round=$r)"
            timeout 20 "$ctl" -s "${RMX_SOCK[$t]}" queue list > "$OUT_DIR/bench-$stamp.$qname" 2>&1
        fi
    fi
    c1=$(tree_ticks "$pid")     # CPU including the drain (queue files removed, DONE records...)
    [[ $MODE == relay && $t == ringmx* ]] && { local lw=$(( $(log_lines "$t") - l0 )); extra+=" logwarn=$lw"
        ((lw > 0)) && { note "$t logged $lw lines during this run:"; tail -n "$((lw < 5 ? lw : 5))" "${RMX_LOG[$t]}" | sed "s/^/#   $t: /" >&2; }; }
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
    [[ -n $extra ]] && note "  $t queue: $qfirst right after the run, $qleft after ${qwait_s}s"
    grep -A5 'smtp-source stderr' <<<"$out" | grep -v 'smtp-source stderr' | sed "s/^/#   $t smtp-source: /" >&2
}

# ---------------------------------------------------------- MODE=tls ----
# Load: perf/tls_load.py (N worker processes, one message per connection:
# EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT) against each target in turn.
# Measured per run like the peers' bench.sh: client wall time and accepted
# count, arrivals at the sink (end to end), CPU of the target's process tree
# (lib.sh tree_cpu_ticks; ringmx by its PID), of the sink and of the client
# (getrusage of the client and its workers), machine busy %.
if [[ $MODE == tls ]]; then
TLS_TARGETS=${TLS_TARGETS:-postfix ringmx postfix-plain ringmx-plain}
IDLE_COUNTS=${IDLE_COUNTS:-16 500}
TLS_LOAD=$HERE/tls_load.py
[[ -r $TLS_LOAD ]] || die "missing $TLS_LOAD"
for t in $TLS_TARGETS; do [[ $t =~ ^(postfix|ringmx)(-plain)?$ ]] || die "bad target '$t' in TLS_TARGETS"; done
SINK_LOG=$(source "$PEERS_DIR/lib.sh" >/dev/null 2>&1; echo "$SINK_LOG")
sink_count() { local l; l=$(tail -n 1 "$SINK_LOG" 2>/dev/null); l=${l##* }; [[ $l =~ ^[0-9]+$ ]] && echo "$l" || echo 0; }
sys_busy() { (source "$PEERS_DIR/lib.sh" && sys_ticks); }
tls_port_of() { case $1 in postfix*) echo $POSTFIX_PORT ;; ringmx*) echo "$PORT" ;; esac; }
tls_pid_of() { case $1 in postfix*) "$PEERS_DIR/peers.sh" pid postfix ;; ringmx*) echo "$RMX_PID" ;; esac; }
rss_of() { awk '/^VmRSS:/{r=$2} /^RssAnon:/{a=$2} END{print r+0, a+0}' "/proc/$1/status" 2>/dev/null || echo "0 0"; }

tls_probe() { # tls_probe TARGET PORT: protocol, cipher suite and key exchange as openssl s_client sees them
    local o; o=$(echo QUIT | timeout 10 openssl s_client -starttls smtp -connect "127.0.0.1:$2" -servername mx.test -brief 2>&1)
    echo "# probe $1: $(sed -n 's/^Protocol version: //p' <<<"$o") $(sed -n 's/^Ciphersuite: //p' <<<"$o") key exchange $(sed -n 's/^Server Temp Key: //p' <<<"$o" | tr -d ' ') signature $(sed -n 's/^Signature type: //p' <<<"$o")" | tee -a "$raw" >&2
}

wait_sink_quiet() { # until the sink count has not moved for 0.5 s (at most 30 s)
    local prev cur i; prev=$(sink_count)
    for ((i = 0; i < 60; i++)); do sleep 0.5; cur=$(sink_count); [[ $cur == "$prev" ]] && return 0; prev=$cur; done
    note "sink never went quiet (count still moving: $cur)"
}

# idle_mem KIND N: fresh ringmx, warm-up (8 TLS + 8 plaintext sessions one after
# the other, so each shard has built its TLS context and ECC cache), VmRSS; then N
# sessions opened and held idle (TLS: after the EHLO that follows the handshake;
# plain: after EHLO), VmRSS again. Appends a MEM line to $raw.
idle_mem() {
    local kind=$1 n=$2 opt=() i rss0 anon0 rss anon est ready="" cpid rf=$tmp/idle.ready out=$tmp/idle.out
    [[ $kind == plain ]] && opt=(--no-tls)
    stop_ringmx; start_ringmx || { note "memory: ringmx did not start"; return 1; }
    for ((i = 0; i < 8; i++)); do
        timeout 20 python3 "$TLS_LOAD" --port "$PORT" --idle 1 --hold 0 >/dev/null 2>&1
        timeout 20 python3 "$TLS_LOAD" --port "$PORT" --idle 1 --hold 0 --no-tls >/dev/null 2>&1
    done
    sleep 0.5; read -r rss0 anon0 < <(rss_of "$RMX_PID")
    rm -f "$rf"
    python3 "$TLS_LOAD" --port "$PORT" --idle "$n" --hold 90 --timeout 60 --ready-file "$rf" "${opt[@]}" >"$out" 2>&1 &
    cpid=$!
    for ((i = 0; i < 700; i++)); do [[ -s $rf ]] && break; kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
    [[ -s $rf ]] && ready=$(cat "$rf")
    sleep 1
    read -r rss anon < <(rss_of "$RMX_PID")
    est=$(ss -tnH state established "( sport = :$PORT )" 2>/dev/null | wc -l)
    kill -TERM "$cpid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$cpid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$cpid" 2>/dev/null && { note "memory: idle client (pid $cpid) did not exit: SIGKILL"; kill -KILL "$cpid"; }
    wait "$cpid" 2>/dev/null
    local opened; opened=$(sed -n 's/^READY \([0-9]*\).*/\1/p' <<<"$ready"); opened=${opened:-0}
    ringmx_alive || note "memory: RINGMX DIED while holding $n idle $kind sessions"
    ((opened != n || est != n)) && { note "memory: $kind n=$n: opened $opened, established at the server $est; client said:"; sed 's/^/#   /' "$out" >&2; }
    echo "MEM kind=$kind n=$n opened=$opened established=$est rss0_kb=$rss0 rss_kb=$rss anon0_kb=$anon0 anon_kb=$anon per_session_kb=$(awk -v a="$rss0" -v b="$rss" -v n="$opened" 'BEGIN{printf "%.1f", (n > 0 ? (b - a) / n : -1)}') anon_per_session_kb=$(awk -v a="$anon0" -v b="$anon" -v n="$opened" 'BEGIN{printf "%.1f", (n > 0 ? (b - a) / n : -1)}') $(grep -o 'tls=[^ ]*' <<<"$ready")" | tee -a "$raw" >&2
}

# run_tls_one TARGET SIZE SESSIONS MSGS ROUND -> a RUN line in $raw (unless ROUND=warmup)
run_tls_one() {
    local t=$1 z=$2 s=$3 m=$4 r=$5 port pid opt=() out rc line died=0 c0 c1 c2 sc0 sc1 b0 b1 tt0 tt1 l0 lw=0 qf="" ql="" qw=""
    if [[ $t == ringmx* ]]; then
        ringmx_alive || { note "ringmx not running before a run: restarting"; start_ringmx || note "ringmx restart FAILED"; }
    fi
    port=$(tls_port_of "$t"); pid=$(tls_pid_of "$t")
    [[ $t == *-plain ]] && opt=(--no-tls)
    wait_sink_quiet
    local k0; k0=$(sink_count)
    local spid; spid=$("$PEERS_DIR/peers.sh" pid sink)
    read -r b0 tt0 < <(sys_busy)
    l0=$(log_lines); c0=$(tree_ticks "$pid"); sc0=$(tree_ticks "$spid")
    # shellcheck disable=SC2086
    out=$(timeout $((SEND_TIMEOUT + 40)) python3 "$TLS_LOAD" --port "$port" -s "$s" -m "$m" -l "$z" --timeout "$SEND_TIMEOUT" \
        -f "$FROM" -t "$RCPT" "${opt[@]}" ${TLS_LOAD_OPTS:-} 2>&1); rc=$?
    line=$(grep '^TLSLOAD' <<<"$out" | tail -n 1)
    local acc; acc=$(sed -n 's/.* accepted=\([0-9]*\).*/\1/p' <<<"$line"); acc=${acc:-0}
    local t0; t0=$(sed -n 's/.* t0=\([0-9.]*\).*/\1/p' <<<"$line"); t0=${t0:-$EPOCHREALTIME}
    # arrivals: wait for k0 + MSGS at the sink, give up E2E_TIMEOUT s after the client or STALL_TIMEOUT s without progress
    local target=$((k0 + m)) tend cur last=-1 lastmove=$SECONDS
    tend=$(awk -v t="$EPOCHREALTIME" -v d="$E2E_TIMEOUT" 'BEGIN{printf "%.6f", t + d}')
    while :; do
        cur=$(sink_count); ((cur >= target)) && break
        ((cur != last)) && { last=$cur; lastmove=$SECONDS; }
        ((SECONDS - lastmove > STALL_TIMEOUT)) && { note "sink count stalled at $((cur - k0))/$m for ${STALL_TIMEOUT}s"; break; }
        awk -v n="$EPOCHREALTIME" -v d="$tend" 'BEGIN{exit !(n > d)}' && break
        sleep 0.02
    done
    read -r b1 tt1 < <(sys_busy)
    c1=$(tree_ticks "$pid"); sc1=$(tree_ticks "$spid")
    local tlast nlast arrived
    read -r tlast nlast < <(awk -v c0="$k0" -v tg="$target" '$2 > c0 { t = $1; n = $2; if ($2 >= tg) exit } END { printf "%.6f %d\n", t, n }' "$SINK_LOG")
    arrived=$(( (nlast > target ? target : nlast) - k0 )); ((arrived < 0)) && arrived=0
    if [[ $t == ringmx* ]] && ! ringmx_alive; then
        died=1; crashes=$((crashes + 1)); wait "$RMX_PID" 2>/dev/null
        note "RINGMX DIED during $t size=$z sessions=$s round=$r (exit status $?); see its log"; RMX_PID=""
    fi
    [[ $t == postfix* ]] && drain_postfix
    if [[ $t == ringmx* && $died == 0 ]]; then
        drain_ringmx; qf=$qfirst ql=$qleft qw=$qwait_s
        if ((qleft != 0)); then
            note "CHECK: ringmx queue NOT empty ${qwait_s}s after the run: $qleft messages ($t size=$z sessions=$s round=$r)"
            timeout 20 "$ctl" -s "$tmp/ctl.sock" queue list > "$OUT_DIR/bench-$stamp.queue-$t-$r.txt" 2>&1
        fi
    fi
    c2=$(tree_ticks "$pid")
    if [[ $t == ringmx* ]]; then
        lw=$(( $(log_lines) - l0 ))
        ((lw > 0)) && { note "ringmx logged $lw lines during this run:"; tail -n "$((lw < 5 ? lw : 5))" "$tmp/ringmx.log" | sed 's/^/#   ringmx: /' >&2; }
    fi
    {
        echo "## $t size=$z sessions=$s round=$r rc=$rc"
        sed 's/^/##   /' <<<"$out"
    } >> "$raw.log"
    [[ $r == warmup ]] && return 0
    local st=() status
    ((rc != 0)) && st+=("CLIENT_RC=$rc")
    [[ -z $line ]] && st+=(NO_RESULT)
    ((acc != m)) && st+=(PARTIAL_ACCEPT)
    ((arrived < m)) && st+=(E2E_INCOMPLETE)
    ((died)) && st+=(DIED)
    [[ -n $ql && $ql != 0 ]] && st+=("QUEUE_LEFT=$ql")
    ((lw > 0)) && st+=("LOG=$lw")
    status=$(IFS=+; echo "${st[*]:-OK}")
    awk -v t="$t" -v r="$r" -v rc="$rc" -v died="$died" -v z="$z" -v s="$s" -v m="$m" -v acc="$acc" -v arr="$arrived" \
        -v t0="$t0" -v tl="$tlast" -v pc="$((c1 - c0))" -v pca="$((c2 - c0))" -v sc="$((sc1 - sc0))" -v hz="$CLK_TCK" \
        -v db="$((b1 - b0))" -v dt="$((tt1 - tt0))" -v qf="$qf" -v ql="$ql" -v qw="$qw" -v lw="$lw" -v st="$status" \
        -v wall="$(sed -n 's/.* wall_s=\([0-9.]*\).*/\1/p' <<<"$line")" -v ccpu="$(sed -n 's/.* client_cpu_s=\([0-9.]*\).*/\1/p' <<<"$line")" -v cb="$(sed -n 's/.* busy_pct=\([0-9-]*\).*/\1/p' <<<"$line")" \
        -v tls="$(sed -n 's/.* tls=\([^ ]*\).*/\1/p' <<<"$line")" -v fe="$(sed -n 's/.* first_error=\([^ ]*\).*/\1/p' <<<"$line")" 'BEGIN {
        es = (arr > 0 ? tl - t0 : 0)
        printf "RUN target=%s round=%s rc=%s died=%s size=%d sessions=%d msgs=%d accepted=%d accept_s=%.3f accept_rate=%.1f arrived=%d e2e_s=%.3f e2e_rate=%.1f peer_cpu_s=%.2f cpu_all_s=%.2f client_cpu_s=%.2f sink_cpu_s=%.2f busy_pct=%s busy_win_pct=%.0f qfirst=%s qleft=%s qwait_s=%s logwarn=%d tls=%s status=%s first_error=%s\n",
            t, r, rc, died, z, s, m, acc, wall, (wall > 0 ? acc / wall : 0), arr, es, (es > 0 ? arr / es : 0), pc / hz, pca / hz, ccpu, sc / hz,
            (cb == "" ? "-" : cb), (dt ? 100 * db / dt : 0), (qf == "" ? "-" : qf), (ql == "" ? "-" : ql), (qw == "" ? "-" : qw), lw, (tls == "" ? "?" : tls), st, (fe == "" ? "-" : fe)
    }' >> "$raw"
    tail -n 1 "$raw" | awk '{ for (i = 2; i <= NF; i++) { p = index($i, "="); f[substr($i, 1, p - 1)] = substr($i, p + 1) }
        printf "#   %s: accepted %d/%d at %.1f msg/s, arrived %d at %.1f msg/s e2e; CPU/msg: target %.3f ms, client %.3f ms, sink %.3f ms; busy %s%%; %s %s\n",
            f["target"], f["accepted"], f["msgs"], f["accept_rate"], f["arrived"], f["e2e_rate"],
            (f["arrived"] > 0 ? 1000 * f["peer_cpu_s"] / f["arrived"] : 0), (f["accepted"] > 0 ? 1000 * f["client_cpu_s"] / f["accepted"] : 0),
            (f["arrived"] > 0 ? 1000 * f["sink_cpu_s"] / f["arrived"] : 0), f["busy_pct"], f["tls"], f["status"] }' >&2
    grep '^# error' <<<"$out" | sed "s/^/#   $t client: /" >&2
    [[ -n $ql ]] && note "  ringmx queue: $qf right after the run, $ql after ${qw}s"
    return 0
}

tls_main() {
    local t c z s m r order=()
    t_start=$SECONDS
    {
        echo "# bench $stamp mode=tls host: $(nproc) CPU, $(uname -r)  rounds=$ROUNDS cases='$CASES' targets='$TLS_TARGETS' idle='$IDLE_COUNTS' shards=$SHARDS durability=fsync client=tls_load.py $(python3 -c 'import ssl,sys; print("python", sys.version.split()[0], ssl.OPENSSL_VERSION.replace(" ", "_"))') opts='${TLS_LOAD_OPTS:-}'"
        echo "# ringmx: $RINGMX_BIN (sha1 $(sha1sum "$tmp/ringmx" | cut -c1-12)) port $PORT; git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '+dirty')"
        echo "# certificate: $TLS_DIR/cert.pem ($(openssl x509 -in "$TLS_DIR/cert.pem" -noout -subject 2>/dev/null), $(openssl x509 -in "$TLS_DIR/cert.pem" -noout -text 2>/dev/null | sed -n 's/^ *Public Key Algorithm: //p'))"
    } | tee "$raw" >&2
    tls_probe postfix "$POSTFIX_PORT"; tls_probe ringmx "$PORT"

    # memory first, each from a fresh ringmx
    local n
    for n in $IDLE_COUNTS; do
        ((n > 0)) || continue
        note "memory: $n idle sessions, plaintext then TLS (fresh ringmx each)"
        idle_mem plain "$n"; idle_mem tls "$n"
    done
    stop_ringmx; start_ringmx || die "ringmx did not come back after the memory part: $(tail -n 5 "$tmp/ringmx.log")"

    if ((WARMUP > 0)); then
        note "warm-up: $WARMUP msgs of ${CASES%%:*} bytes per target at 4 sessions (not recorded)"
        for t in $TLS_TARGETS; do run_tls_one "$t" "${CASES%%:*}" 4 "$WARMUP" warmup; done
    fi
    for c in $CASES; do
        IFS=: read -r z s m <<<"$c"; m=${m:-$MSGS}
        for ((r = 1; r <= ROUNDS; r++)); do
            read -r -a order <<<"$TLS_TARGETS"
            if ((r % 2 == 0)); then local rev=(); for ((n = ${#order[@]} - 1; n >= 0; n--)); do rev+=("${order[n]}"); done; order=("${rev[@]}"); fi
            for t in "${order[@]}"; do
                if ((SECONDS - t_start > BUDGET_S)); then
                    note "time budget ${BUDGET_S}s spent: skipping $t size=$z sessions=$s round=$r"
                    echo "RUN target=$t round=$r rc=-1 died=0 size=$z sessions=$s msgs=$m status=SKIPPED" >> "$raw"
                    continue
                fi
                note "size=$z sessions=$s round $r/$ROUNDS: $t (t=$((SECONDS - t_start))s)"
                run_tls_one "$t" "$z" "$s" "$m" "$r"
            done
        done
    done
    if ringmx_alive; then
        echo "# check: ringmx queue list at the end=$(queue_count) rss_kb=$(rss_of "$RMX_PID" | cut -d' ' -f1)" >> "$raw"
    fi
    ((crashes > 0)) && echo "# ringmx crashes: $crashes" >> "$raw"
    if [[ -s $tmp/ringmx.log ]]; then
        note "ringmx stderr: $(wc -l < "$tmp/ringmx.log") lines (saved as $OUT_DIR/bench-$stamp.ringmx.log); last ones:"
        tail -n 5 "$tmp/ringmx.log" | sed 's/^/#   /' >&2
    fi
    render_tls_table "$raw" | tee "$table"
    note "raw results: $raw (per-run client output: $raw.log)"
    note "table:       $table   (total $((SECONDS - t_start))s)"
}
tls_main
exit 0
fi

t_start=$SECONDS
{
    echo "# bench $stamp mode=$MODE host: $(nproc) CPU, $(uname -r)  size=$SIZE msgs=$MSGS rounds=$ROUNDS sessions='$SESSIONS' cases='$CASES' shards=$SHARDS durability=fsync$( ((FILTERS)) && echo " targets='${targets[*]}'")"
    echo "# ringmx: $RINGMX_BIN (sha1 $(sha1sum "$tmp/ringmx" | cut -c1-12)) port $PORT; git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '+dirty')"
    if ((FILTERS)); then
        echo "# ringmx-flt: port $FLT_PORT, the same config plus tables {trusted: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["tables"]["trusted"]["inline"]))' "$tmp/ringmx-flt.json") networks, valid: $FLT_RCPTS recipients} and chains connect(1) helo(2) mail(1) rcpt(2) data(2) (perf/README.md)"
        sed 's/^/# explain smtp-source: /' <<<"$flt_ok"
        grep '^rcpt' <<<"$flt_bad" | sed 's/^/# explain unknown recipient: /'
    fi
} | tee "$raw" >&2

if ((WARMUP > 0)); then
    note "warm-up: $WARMUP msgs of ${CASES%%:*} bytes per target at 4 sessions (not recorded)"
    for t in "${targets[@]}"; do run_one "$t" "${CASES%%:*}" 4 "$WARMUP" warmup; done
fi

for c in $CASES; do
    IFS=: read -r z s m <<<"$c"; m=${m:-$MSGS}
    for ((r = 1; r <= ROUNDS; r++)); do
        order=("${targets[@]}")
        if ((r % 2 == 0)); then         # alternate the order between rounds
            order=(); for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
        fi
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
if [[ $FILTERS == 1 ]] && ringmx_alive ringmx-flt; then
    q=$(queue_count ringmx-flt)
    note "ringmx-flt queue at the end: $q messages; spool: $(du -sh "$tmp/spool-flt" 2>/dev/null | cut -f1)"
    echo "# check: ringmx-flt queue list at the end=$q spool=$(du -sk "$tmp/spool-flt" 2>/dev/null | cut -f1)KB" >> "$raw"
fi
((crashes > 0)) && echo "# ringmx crashes: $crashes" >> "$raw"
for inst in ringmx ringmx-flt; do
    [[ -s ${RMX_LOG[$inst]:-} ]] || continue
    note "$inst stderr: $(wc -l < "${RMX_LOG[$inst]}") lines (saved as $OUT_DIR/bench-$stamp.$inst.log); last ones:"
    tail -n 5 "${RMX_LOG[$inst]}" | sed 's/^/#   /' >&2
done

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
