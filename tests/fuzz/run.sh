#!/bin/sh
# Runs libFuzzer targets for a bounded time each (make fuzz calls this).
#
#   tests/fuzz/run.sh FUZZ_BUILD_DIR SECONDS TARGET...
#
# Each TARGET is FUZZ_BUILD_DIR/tests/fuzz/TARGET_fuzzer, started on the seeds
# in tests/fuzz/corpus/TARGET plus its own working corpus
# (FUZZ_BUILD_DIR/corpus/TARGET, kept between runs, never committed). A crash,
# leak, sanitizer report, timeout (FUZZ_TIMEOUT, 10 s per input) or out-of-memory
# is a finding: libFuzzer writes the input to FUZZ_BUILD_DIR/findings/ and the
# target fails. tests/fuzz/TARGET.dict, when there is one, is the dictionary.
# Extra libFuzzer flags can be given in FUZZ_ARGS. Prints one line per target
# (executions, coverage, new inputs, findings) and fails if any target did.
set -u
dir=$1; seconds=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
findings="$dir/findings"
mkdir -p "$findings"
status=0
for t in "$@"; do
  bin="$dir/tests/fuzz/${t}_fuzzer"
  seeds="$here/corpus/$t"
  work="$dir/corpus/$t"
  log="$dir/$t.log"
  dict=""
  [ -f "$here/$t.dict" ] && dict="-dict=$here/$t.dict"
  mkdir -p "$work" "$seeds"
  before=$(ls "$findings" | wc -l)
  echo "fuzz $t: running for ${seconds}s (log: $log)"
  # shellcheck disable=SC2086
  "$bin" -max_total_time="$seconds" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/$t-" $dict ${FUZZ_ARGS:-} \
    "$work" "$seeds" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  new=$(ls "$findings" | wc -l)
  if [ "$rc" -ne 0 ] || [ "$new" -ne "$before" ]; then
    status=1
    echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} executions; findings in $findings:"
    ls -t "$findings" | head -n $((new - before > 0 ? new - before : 1)) | sed 's/^/  /'
    grep -m 3 -E 'ERROR:|runtime error:|property broken|SUMMARY:' "$log" | sed 's/^/  /'
  else
    echo "fuzz $t: ${execs:-?} executions, ${cov:-cov: ?}, ${added:-0} new inputs, findings: none"
  fi
done
exit $status
