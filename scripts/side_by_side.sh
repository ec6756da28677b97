#!/usr/bin/env bash
# Run two commands side by side: the first with its output shown, the second with its output written to LOG, whose
# last lines are shown when it ends. On 2 CPU cores two 1-thread jobs get more done than one 2-thread job after the
# other (README, "Where the time goes"). If either command fails the other is stopped, and the exit status is the
# failure's; Ctrl-C stops both.
#   scripts/side_by_side.sh LOG 'first command' 'second command'
set -u
if [ $# -ne 3 ]; then
    echo "usage: $0 LOG 'first command' 'second command'" >&2
    exit 2
fi
log=$1 first=$2 second=$3
mkdir -p "$(dirname "$log")" || exit 1
setsid bash -c "$second" >"$log" 2>&1 &  # a process group of its own, so that stopping it stops its children
pid=$!
stop_second() { kill -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
trap 'stop_second; exit 130' INT TERM
echo "side by side (output in $log): $second"
bash -c "$first"
rc=$?
if [ "$rc" -ne 0 ]; then
    stop_second
    echo "error: the first command failed (exit $rc); the second was stopped" >&2
    exit "$rc"
fi
wait "$pid"
rc=$?
tail -n 4 "$log"
if [ "$rc" -ne 0 ]; then
    echo "error: '$second' failed (exit $rc); its output is in $log" >&2
    exit "$rc"
fi
