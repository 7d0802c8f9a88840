#!/bin/sh
# Runs each unit-test binary; prints one summary line in the plain
# "N passed, N failed" form and fails if any binary failed.
pass=0; fail=0; failed=""
for t in "$@"; do
  if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $(basename "$t")"; fi
done
[ -n "$failed" ] && echo "failed unit binaries:$failed"
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
