#!/bin/bash
# Run every test of ringmx and end with the line "N passed, N failed".
#
#   ./tests/run.sh            (from the repo root, as root on a fresh Debian 12)
#
# Steps: install packages (tools/bootstrap.sh); build a strict build (build-ci,
# -Werror) and an ASan+UBSan build (build-asan); unit tests (meson, suite
# "unit") and black-box tests (pytest) against both; the fuzz targets for a
# bounded time (FUZZ_SECONDS per target, default 20); a clang-format check;
# the shape check (tools/shape.py: no function over 70 lines).
# Logs go to build-logs/.  Exit status 0 iff nothing failed.
#
# Counting: each unit test, each pytest test, each fuzz target and the format
# check is one test; a failed build, and each step that then could not run,
# count as one failure each.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
LOGS="$ROOT/build-logs"
mkdir -p "$LOGS"
export FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
PYTHON=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1 # keep __pycache__ out of the tree

PASSED=0
FAILED=0
FAILED_NAMES=()

section() { printf '\n==== %s ====\n' "$*"; }
pass() { PASSED=$((PASSED + ${2:-1})); }
fail() {
	FAILED=$((FAILED + ${2:-1}))
	FAILED_NAMES+=("$1")
}
tail_log() {
	echo "---- last lines of $1 ----"
	tail -n "${2:-40}" "$1"
	echo "---- (full log: $1) ----"
}
# run_logged LOG TIMEOUT_S CMD...: run with a time bound, output to LOG.
run_logged() {
	local log=$1 limit=$2
	shift 2
	timeout --kill-after=30 "$limit" "$@" >"$log" 2>&1
}

# ---------------------------------------------------------------- 1. packages
section "bootstrap (tools/bootstrap.sh)"
if run_logged "$LOGS/bootstrap.log" 1800 sh tools/bootstrap.sh; then
	echo "packages: ok"
else
	echo "bootstrap failed"
	tail_log "$LOGS/bootstrap.log"
	fail bootstrap
fi

# ---------------------------------------------------------------- 2. builds
# setup_build DIR OPTIONS...: reconfigure an existing build dir, else make it
# afresh (wiping a broken one).
setup_build() {
	local dir=$1
	shift
	if [ -f "$dir/meson-private/coredata.dat" ] &&
		meson setup --reconfigure "$dir" "$@"; then
		return 0
	fi
	rm -rf "$dir"
	meson setup "$dir" "$@"
}

BUILD_OK=()
build() {
	local name=$1
	shift
	section "build $name ($*)"
	local log="$LOGS/build-$name.log"
	if { setup_build "$name" "$@" && timeout 1200 meson compile -C "$name"; } >"$log" 2>&1; then
		echo "$name: ok"
		BUILD_OK+=("$name")
	else
		echo "$name: BUILD FAILED"
		tail_log "$log" 60
		fail "build $name"
	fi
}
is_built() {
	local b
	for b in "${BUILD_OK[@]}"; do [ "$b" = "$1" ] && return 0; done
	return 1
}

build build-ci -Dwerror=true
build build-asan -Db_sanitize=address,undefined -Db_lundef=false

# Sanitizer settings for everything that runs the ASan build.
ASAN_ENV=(
	"ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1"
	"UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"
	"LSAN_OPTIONS=report_objects=1"
)
env_for() {
	if [ "$1" = build-asan ]; then printf '%s\n' "${ASAN_ENV[@]}"; fi
}

# ---------------------------------------------------------------- 3. unit tests
# count_meson LOG: adds the "Ok:"/"Fail:"... summary lines of meson test.
count_meson() {
	local log=$1 rc=$2 name=$3
	local ok fl up to
	ok=$(awk '/^Ok:/ {print $2}' "$log" | tail -n1)
	fl=$(awk '/^Fail:/ {print $2}' "$log" | tail -n1)
	up=$(awk '/^Unexpected Pass:/ {print $3}' "$log" | tail -n1)
	to=$(awk '/^Timeout:/ {print $2}' "$log" | tail -n1)
	ok=${ok:-0} fl=${fl:-0} up=${up:-0} to=${to:-0}
	local bad=$((fl + up + to))
	echo "$name: $ok ok, $bad failed"
	pass "$name" "$ok"
	if [ "$bad" -gt 0 ]; then
		fail "$name" "$bad"
	elif [ "$rc" -ne 0 ]; then
		# meson failed without a failing test (no tests, rebuild error...)
		fail "$name (meson test exit $rc)"
	fi
	if [ "$bad" -gt 0 ] || [ "$rc" -ne 0 ]; then tail_log "$log" 60; fi
}

for b in build-ci build-asan; do
	section "unit tests ($b)"
	if ! is_built "$b"; then
		echo "skipped: $b did not build"
		fail "unit $b (not built)"
		continue
	fi
	log="$LOGS/unit-$b.log"
	mapfile -t extra_env < <(env_for "$b")
	env "${extra_env[@]}" timeout --kill-after=30 900 \
		meson test -C "$b" --suite unit --print-errorlogs >"$log" 2>&1
	count_meson "$log" $? "unit $b"
done

# ---------------------------------------------------------------- 4. black-box
# count_junit XML: prints "passed failed skipped" (errors and failures both
# fail; a test with an error in teardown counts once, as failed), then each
# failed test (stderr) and each skipped one with its reason (stdout): a peer
# that cannot start on this machine is seen, never a silent pass.
count_junit() {
	"$PYTHON" - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET
passed = failed = 0
names, skips = [], []
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print("0 1 0")
    print("unreadable junit xml: %s" % e, file=sys.stderr)
    sys.exit(0)
for tc in root.iter("testcase"):
    tags = {child.tag for child in tc}
    name = "%s::%s" % (tc.get("classname", ""), tc.get("name", ""))
    if tags & {"failure", "error"}:
        failed += 1
        names.append(name)
    elif "skipped" in tags:
        why = tc.find("skipped").get("message", "")
        skips.append("SKIPPED %s: %s" % (name, " ".join(why.split())[:300]))
    else:
        passed += 1
print(passed, failed, len(skips))
for n in names:
    print("FAILED " + n, file=sys.stderr)
for s in skips:
    print(s)
EOF
}

for b in build-ci build-asan; do
	section "black-box tests (pytest, $b)"
	if ! is_built "$b"; then
		echo "skipped: $b did not build"
		fail "pytest $b (not built)"
		continue
	fi
	log="$LOGS/pytest-$b.log"
	xml="$LOGS/pytest-$b.xml"
	rm -f "$xml"
	mapfile -t extra_env < <(env_for "$b")
	env "${extra_env[@]}" RINGMX_BIN="$ROOT/$b/ringmx" RINGMXCTL_BIN="$ROOT/$b/ringmxctl" \
		timeout --kill-after=30 1200 \
		"$PYTHON" -m pytest tests/blackbox -q -p no:cacheprovider -rfE \
		--junitxml="$xml" >"$log" 2>&1
	rc=$?
	if [ -f "$xml" ]; then
		count_junit "$xml" >"$LOGS/pytest-$b.counts" 2>"$LOGS/pytest-$b.failed"
		read -r p f sk <"$LOGS/pytest-$b.counts"
		echo "pytest $b: $p passed, $f failed, $sk skipped"
		tail -n +2 "$LOGS/pytest-$b.counts"
		pass "pytest $b" "$p"
		[ "$f" -gt 0 ] && fail "pytest $b" "$f"
		if [ "$f" -eq 0 ] && [ "$rc" -ne 0 ]; then
			fail "pytest $b (exit $rc)"
		fi
		if [ "$f" -gt 0 ] || [ "$rc" -ne 0 ]; then
			cat "$LOGS/pytest-$b.failed"
			tail_log "$log" 40
		fi
	else
		echo "pytest $b: no results (exit $rc)"
		tail_log "$log" 40
		fail "pytest $b (no junit xml, exit $rc)"
	fi
done

# ---------------------------------------------------------------- 5. fuzzing
section "fuzz targets (tests/fuzz/run.sh, ${FUZZ_SECONDS}s each)"
log="$LOGS/fuzz.log"
if [ -x tests/fuzz/run.sh ] || [ -f tests/fuzz/run.sh ]; then
	timeout --kill-after=30 1800 sh tests/fuzz/run.sh "$LOGS/fuzz" >"$log" 2>&1
	rc=$?
	# tests/fuzz/run.sh prints one line per target: "fuzz <name>: ok (...)"
	# or "fuzz <name>: FAILED" (PASS/FAIL <name> is understood too).
	grep -E '^fuzz [^:]+: (ok|FAILED)' "$log" | sed 's/^/  /'
	fp=$(grep -cE '^(fuzz [^:]+: ok|(PASS|ok)[: ])' "$log")
	ff=$(grep -cE '^(fuzz [^:]+: FAILED|(FAIL|FAILED|not ok)[: ])' "$log")
	if [ "$fp" -eq 0 ] && [ "$ff" -eq 0 ]; then
		# no per-target lines: one result for the whole script
		if [ "$rc" -eq 0 ]; then fp=1; else ff=1; fi
	elif [ "$rc" -ne 0 ] && [ "$ff" -eq 0 ]; then
		ff=1
	fi
	echo "fuzz: $fp passed, $ff failed (exit $rc)"
	pass fuzz "$fp"
	if [ "$ff" -gt 0 ]; then
		fail fuzz "$ff"
		tail_log "$log" 40
	fi
else
	echo "tests/fuzz/run.sh is missing"
	fail "fuzz (tests/fuzz/run.sh missing)"
fi

# ---------------------------------------------------------------- 6. format
section "clang-format check"
log="$LOGS/clang-format.log"
mapfile -t srcs < <(find src ring queue filters tools tests -type f \( -name '*.c' -o -name '*.h' \) 2>/dev/null | sort)
if [ "${#srcs[@]}" -eq 0 ]; then
	echo "no C sources found" >"$log"
	fail "clang-format (no sources)"
elif clang-format --dry-run --Werror "${srcs[@]}" >"$log" 2>&1; then
	echo "clang-format: ok (${#srcs[@]} files)"
	pass clang-format
else
	echo "clang-format: files need formatting:"
	grep -oE '^[^ :]+\.(c|h):[0-9]+:[0-9]+: (error|warning)' "$log" | cut -d: -f1 | sort -u | sed 's/^/  /'
	tail_log "$log" 20
	fail clang-format
fi

# ---------------------------------------------------------------- 7. shape
# No function over 70 lines in the program's folders (tools/shape.py; the
# report also lists long files and folder include cycles).
section "shape (tools/shape.py)"
log="$LOGS/shape.log"
if "$PYTHON" tools/shape.py --check functions >"$log" 2>&1; then
	echo "shape: ok ($(head -n 1 "$log"))"
	pass shape
else
	echo "shape: FAILED"
	tail_log "$log" 30
	fail shape
fi

# ---------------------------------------------------------------- summary
section "summary"
if [ "${#FAILED_NAMES[@]}" -gt 0 ]; then
	printf 'failed: %s\n' "${FAILED_NAMES[@]}"
fi
echo "logs: $LOGS"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
