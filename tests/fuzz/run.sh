#!/bin/sh
# Build and run the SMTP parser fuzzers for a bounded time.
#
#   tests/fuzz/run.sh [OUT_DIR]        (default /tmp/ringmx-fuzz)
#   FUZZ_SECONDS=300 tests/fuzz/run.sh (per target; default 30)
#
# Targets: cmd (line framing + command parsing), data (body scanner and
# unstuffing) and data_portable (the same driver with the scanner's portable
# word-at-a-time path instead of SSE2, so neither path goes unfuzzed),
# reply (the outbound client's reply parser, EHLO and dot-stuffing),
# record (spool format 2: segment head, tagged records, the recovery scan,
# the message reader, the envelope and state codecs), sasl
# (AUTH PLAIN/LOGIN exchanges and strict base64) and users (the users_file
# parser, with crypt_rn stubbed in the driver).
# The seed corpora are copied to a temporary directory: nothing is written
# back into the source tree.  Crash inputs and logs land in OUT_DIR.
# Prints "fuzz <name>: ok (<execs> execs)" or "fuzz <name>: FAILED" per
# target and exits non-zero if any target failed to build or found a crash.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-/tmp/ringmx-fuzz}
secs=${FUZZ_SECONDS:-30}
cc=${CC_FUZZ:-clang}
flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g -O1"
flags="$flags -std=c17 -D_GNU_SOURCE -Wall -Wextra -I$root/src"

mkdir -p "$out" || exit 1
status=0

# run_target NAME DRIVER CORPUS EXTRA_CFLAGS (may also name extra sources)
run_target() {
	name=$1
	bin="$out/fuzz_$name"
	log="$out/fuzz_$name.log"
	# shellcheck disable=SC2086 # flags are word lists on purpose
	if ! $cc $flags $4 "$here/$2" "$root/src/smtp/parse.c" -o "$bin" >"$log" 2>&1; then
		cat "$log" >&2
		echo "fuzz $name: FAILED"
		status=1
		return
	fi
	corpus=$(mktemp -d "$out/corpus_$name.XXXXXX") || exit 1
	cp "$here/$3"/* "$corpus/"
	"$bin" -max_total_time="$secs" -dict="$here/smtp.dict" -print_final_stats=1 \
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

run_target cmd fuzz_cmd.c corpus_cmd ""
run_target data fuzz_data.c corpus_data ""
run_target data_portable fuzz_data.c corpus_data "-DRMX_PARSE_PORTABLE"
run_target reply fuzz_reply.c corpus_reply "$root/src/smtp/client.c"
run_target record fuzz_record.c corpus_record "-I$root $root/queue/record.c"
run_target sasl fuzz_sasl.c corpus_sasl "$root/src/auth/sasl.c"
# -lcrypt after users.c, which needs it (links with --as-needed too).
run_target users fuzz_users.c corpus_users "$root/src/auth/users.c -lcrypt"
exit $status
