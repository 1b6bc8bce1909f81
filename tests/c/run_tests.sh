#!/bin/sh
# Runs each C test program and prints the tally: exit 0 pass, 77 skip, else fail.
passed=0; failed=0; skipped=0
for t in "$@"; do
    start=$(date +%s)
    "$t" > "$t.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    case $rc in
        0) passed=$((passed + 1)); echo "PASS $(basename "$t") (${secs}s)" ;;
        77) skipped=$((skipped + 1)); echo "SKIP $(basename "$t")" ;;
        *) failed=$((failed + 1)); echo "FAIL $(basename "$t") (exit $rc)"; sed 's/^/    /' "$t.log" | tail -30 ;;
    esac
done
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
