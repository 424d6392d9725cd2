#!/bin/sh
# The serving image's entrypoint: TorchServe in the foreground, stopped cleanly on SIGTERM/SIGINT.
#
# `torchserve --foreground` is a Python launcher waiting on the Java frontend; a signal that kills
# the launcher would leave the frontend and its workers running (and `docker stop` would then
# SIGKILL them after its grace period). So the signal is turned into `torchserve --stop`, which
# terminates the frontend (it unloads its workers) and waits for it; then the launcher returns.
#
# Arguments starting with "-" are added to TorchServe's command line (e.g. --models a=a.mar);
# any other command runs instead of TorchServe (e.g. `docker run ... IMAGE sh`).
set -eu

TS_HOME="${TS_HOME:-/home/model-server}"

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

stopping=0
# shellcheck disable=SC2329  # called by the trap below
stop() {
    stopping=1
    echo "entrypoint: stopping TorchServe" >&2
    torchserve --stop --foreground || true
}
trap stop TERM INT

# The key file (key_file.json) is written to the working directory: $TS_HOME.
cd "$TS_HOME"
torchserve --start --foreground --ncs --ts-config "$TS_HOME/config.properties" "$@" &
launcher=$!
status=0
wait "$launcher" || status=$?
# A trapped signal interrupts `wait` (status 128+n) before `stop` runs; the launcher exits while
# `stop` waits for the frontend: wait again for its own exit status.
while [ "$stopping" = 1 ] && [ "$status" -gt 128 ]; do
    status=0
    wait "$launcher" || status=$?
done
exit "$status"
