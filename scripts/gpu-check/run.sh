#!/usr/bin/env bash
# The GPU check, on a bare GPU machine: no Node, no network, an NVIDIA driver
# and PyTorch present. Everything else is in this folder (made by
# scripts/gpu-check.sh): a compressed Node binary, splitnet and its runtime
# packages, a slice of Fashion-MNIST, and the Vulkan loader and EGL/GL vendor
# libraries as Debian packages, unpacked here (never into /).
#
#   gpu-check/run.sh [OUT_DIR] [-- extra flags for gpu-check.js]
#
# Writes OUT_DIR/gpu-check.json and OUT_DIR/gpu-check.log (default: ./gpu-check-out).
# Rehearse it on a CPU machine with: gpu-check/run.sh OUT -- --adapter software --quick
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-gpu-check-out}" && cd "${1:-gpu-check-out}" && pwd)"
shift || true
[ "${1:-}" = "--" ] && shift
work="$here/.unpacked"
mkdir -p "$work"
exec > >(tee "$out/run.log") 2>&1

# xz, or Python's lzma where xz is missing.
unxz_to() {
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"
  else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi
}

# A marker written last: an unpack cut short is done again, not trusted.
if [ ! -f "$work/.complete" ]; then
  echo "unpacking Node, splitnet and the data into $work"
  rm -rf "$work" && mkdir -p "$work"
  unxz_to "$here/node.xz" "$work/node" && chmod +x "$work/node"
  unxz_to "$here/app.tar.xz" "$work/app.tar" && tar -xf "$work/app.tar" -C "$work" && rm "$work/app.tar"
  mkdir -p "$work/fashion-mnist"
  for f in "$here"/data/*.xz; do unxz_to "$f" "$work/fashion-mnist/$(basename "${f%.xz}")"; done
  touch "$work/.complete"
fi

# The Vulkan loader and the EGL/GL dispatch libraries, only where the machine lacks them.
libs="$work/libs"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  if [ ! -d "$libs" ]; then
    echo "no Vulkan loader on this machine: unpacking the bundled one"
    for d in "$here"/debs/*.deb; do
      if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$d" "$libs"
      else (mkdir -p "$libs" && cd "$libs" && ar p "$d" data.tar.xz | tar -xJ); fi
    done
  fi
  export LD_LIBRARY_PATH="$libs/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# The loader looks for drivers' manifests in /usr/share/vulkan/icd.d and
# /etc/vulkan/icd.d; container images often keep NVIDIA's elsewhere.
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/local/share/vulkan/icd.d/nvidia_icd.json /usr/lib/x86_64-linux-gnu/nvidia/nvidia_icd.json; do
    if [ -f "$icd" ]; then
      echo "the loader's search path has no NVIDIA driver manifest: VK_DRIVER_FILES=$icd"
      export VK_DRIVER_FILES="$icd"
      egl="$(dirname "$(dirname "$icd")")/glvnd/egl_vendor.d/10_nvidia.json"
      [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"
      break
    fi
  done
fi

# Mesa's device-select layer shows a process one GPU by its PCI address (how a worker opens its own
# card among identical ones). Where the machine has no such layer, the bundled one is found through
# XDG_DATA_DIRS (the Vulkan loader's implicit-layer search path), with the libraries it loads that the
# machine lacks.
if ! ls /usr/share/vulkan/implicit_layer.d/VkLayer_MESA_device_select.json /etc/vulkan/implicit_layer.d/VkLayer_MESA_device_select.json >/dev/null 2>&1; then
  echo "no device-select layer on this machine: using the bundled one"
  for so in "$here"/layer/deps/*; do
    ldconfig -p 2>/dev/null | grep -q " $(basename "$so") " || cp -n "$so" "$here/layer/lib/"
  done
  export XDG_DATA_DIRS="$here/layer/share:${XDG_DATA_DIRS:-/usr/local/share:/usr/share}"
  export LD_LIBRARY_PATH="$here/layer/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

echo "machine: $(uname -srm); GPUs: $(nvidia-smi -L 2>/dev/null | tr '\n' ';' || echo 'nvidia-smi not found')"
echo "node: $("$work/node" --version); python: $(python3 -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)' 2>/dev/null || echo 'python3 or torch missing')"
cd "$work/app"
exec "$work/node" bench/gpu-check.js --out "$out" --data "$work/fashion-mnist" --python python3 "$@"
