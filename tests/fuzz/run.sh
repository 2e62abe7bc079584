#!/bin/sh
# The one harness of the libFuzzer targets: builds them with meson, then
# runs each for a bounded time with its own dictionary and seed corpus.
#
#   tests/fuzz/run.sh [OUT_DIR [TARGET...]]  (OUT_DIR default /tmp/ringmx-fuzz;
#                                            TARGETs default: all of them)
#   FUZZ_SECONDS=300 tests/fuzz/run.sh       (per target; default 30)
#   FUZZ_BUILD=DIR                           (meson build directory; default
#                                            build-fuzz at the top of the tree)
#   CC_FUZZ=clang-15                         (compiler for a new FUZZ_BUILD)
#
# The targets are meson executables (tests/fuzz/meson.build, option
# -Dfuzz=true).  libFuzzer comes with clang, so they live in a build
# directory of their own, configured with clang: this script sets it up
# when it is missing or unusable (CC=clang meson setup build-fuzz
# -Dfuzz=true), turns the option on in an existing one, and rebuilds what
# changed.
#
# Targets: cmd (line framing + command parsing), data (body scanner and
# unstuffing) and data_portable (the same driver with the scanner's portable
# word-at-a-time path instead of SSE2, so neither path goes unfuzzed),
# reply (the outbound client's reply parser, EHLO and dot-stuffing),
# record (spool format 2: segment head, tagged records, the recovery scan,
# the message reader, the envelope and state codecs), sasl
# (AUTH PLAIN/LOGIN exchanges and strict base64), users (the users_file
# parser, with crypt_rn stubbed in the driver) and filters (the filter
# chains: flt_compile over "filters"/"tables" put into a fixed config, then
# flt_decide/flt_resume on made-up sessions).  Target T runs with the
# dictionary T.dict and the seeds corpus_T (data_portable shares data's).
#
# The seed corpora are copied to a temporary directory: nothing is written
# back into the source tree.  Build and fuzz logs and crash inputs land in
# OUT_DIR.  Prints "fuzz <name>: ok (<execs> execs)" or "fuzz <name>: FAILED"
# per target (tests/run.sh counts these lines) and exits non-zero if any
# target failed to build or found a crash.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-/tmp/ringmx-fuzz}
[ $# -gt 0 ] && shift
targets=${*:-cmd data data_portable reply record sasl users filters}
secs=${FUZZ_SECONDS:-30}
build=${FUZZ_BUILD:-$root/build-fuzz}

mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
status=0

# Configure the build directory: turn the option on in an existing one, else
# (none, or one meson refuses, e.g. made with gcc) make it afresh, as
# tests/run.sh does with its builds.  On failure every target is reported
# failed (there is nothing to run), with meson's reason on stderr.
setup() {
	log="$out/meson-setup.log"
	if [ -f "$build/meson-private/coredata.dat" ] &&
		meson setup --reconfigure "$build" "$root" -Dfuzz=true >"$log" 2>&1; then
		return 0
	fi
	rm -rf "$build"
	CC=${CC_FUZZ:-clang} meson setup "$build" "$root" -Dfuzz=true >>"$log" 2>&1 && return 0
	tail -n 20 "$log" >&2
	for name in $targets; do
		echo "fuzz $name: FAILED"
	done
	exit 1
}

# The dictionary and seed corpus of a target: data_portable runs the data
# driver, so it shares its inputs.
inputs_of() {
	case $1 in
	data_portable) echo data ;;
	*) echo "$1" ;;
	esac
}

run_target() {
	name=$1
	key=$(inputs_of "$name")
	bin="$build/tests/fuzz/fuzz_$name"
	log="$out/fuzz_$name.log"
	if [ ! -f "$here/$key.dict" ] || [ ! -d "$here/corpus_$key" ]; then
		echo "run.sh: no target $name (no $key.dict or corpus_$key)" >&2
		echo "fuzz $name: FAILED"
		status=1
		return
	fi
	if ! meson compile -C "$build" "fuzz_$name" >"$log" 2>&1; then
		tail -n 40 "$log" >&2
		echo "fuzz $name: FAILED"
		status=1
		return
	fi
	corpus=$(mktemp -d "$out/corpus_$name.XXXXXX") || exit 1
	cp "$here/corpus_$key"/* "$corpus/"
	"$bin" -max_total_time="$secs" -dict="$here/$key.dict" -print_final_stats=1 \
		-artifact_prefix="$out/crash_$name-" "$corpus" >>"$log" 2>&1
	rc=$?
	rm -rf "$corpus"
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	if [ "$rc" -eq 0 ] && [ -n "$execs" ]; then
		echo "fuzz $name: ok ($execs execs)"
	else
		tail -n 40 "$log" >&2
		echo "fuzz $name: FAILED"
		status=1
	fi
}

setup
for name in $targets; do
	run_target "$name"
done
exit $status
