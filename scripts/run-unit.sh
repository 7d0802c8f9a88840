#!/bin/sh
# Runs the unit-test binaries side by side (most of their time is waiting:
# timers, loopback servers), prints each one's output in the order given, then
# one summary line in the plain "N passed, N failed" form; fails if any failed.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
i=0
for t in "$@"; do
  i=$((i + 1))
  ( "$t" >"$out/$i.log" 2>&1; echo $? >"$out/$i.rc" ) &
done
wait
pass=0; fail=0; failed=""; i=0
for t in "$@"; do
  i=$((i + 1))
  cat "$out/$i.log"
  if [ "$(cat "$out/$i.rc")" = 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $(basename "$t")"; fi
done
[ -n "$failed" ] && echo "failed unit binaries:$failed"
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
