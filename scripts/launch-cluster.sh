#!/usr/bin/env bash
# Launches a training run across the cluster in a config file: one worker per
# device (local processes, or over the config's ssh template for other hosts)
# and the coordinator in this process. A thin wrapper a person or a scheduler
# can run; every flag after the config goes to `splitnet launch`.
#
#   scripts/launch-cluster.sh [cluster.config.json] [--mode data|model|single] [train flags...]
#
# Exit code: 0 when training finished, 1 when the run failed (the message names
# the worker and the reason), 2 for bad input (config, flags, data files).
set -euo pipefail
cd "$(dirname "$0")/.."

config=cluster.config.json
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config=$1; shift; fi
if [ ! -f dist/cli.js ]; then npm run build --silent; fi
exec node bin/splitnet.js launch --config "$config" "$@"
