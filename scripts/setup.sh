#!/usr/bin/env bash
# Gets Fashion-MNIST onto this machine by whichever route works here:
#   1. it is already in --data / $SPLITNET_DATA / ./data/fashion-mnist / /usr/share/datasets/fashion-mnist
#   2. Debian's dataset-fashion-mnist package (when apt-get and root are available)
#   3. the data set's own download mirror (splitnet data fetch)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f dist/cli.js ]; then npm run build --silent; fi
splitnet() { node bin/splitnet.js "$@"; }

if splitnet data check 2>/dev/null; then exit 0; fi

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; then
    splitnet data check && exit 0
  fi
  echo "Fashion-MNIST: the Debian package is not available here; trying the data set's mirror"
fi

splitnet data fetch
splitnet data check
