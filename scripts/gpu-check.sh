#!/usr/bin/env bash
# Packs the GPU check into one file of at most 64 MiB for a GPU machine that
# has no Node and no network (an NVIDIA driver and PyTorch are enough).
#
#   scripts/gpu-check.sh [BUNDLE]          # default: ./gpu-check.tar
#
# Then, on the GPU machine:
#   tar -xf gpu-check.tar && gpu-check/run.sh OUT_DIR
# which writes OUT_DIR/gpu-check.json and OUT_DIR/gpu-check.log in a few minutes
# (what it measures: bench/gpu-check.ts). Rehearse the bundle here, on llvmpipe:
#   gpu-check/run.sh OUT_DIR -- --adapter software --quick --train-steps 20
#
# Needs, on this machine: npm ci done, xz, and Debian's apt (to download the
# Vulkan loader and the EGL/GL vendor libraries as .deb files) or DEBS_DIR
# pointing at those .deb files; Fashion-MNIST from `splitnet data fetch` or
# Debian's dataset-fashion-mnist.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$(realpath -m "${1:-gpu-check.tar}")"
limit=$((64 * 1024 * 1024))
train_images=38400 # 300 steps of batch 128: the check's short real run
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
b="$stage/gpu-check"
app="$stage/app"
mkdir -p "$b/data" "$b/debs" "$app"
cd "$root"

echo "compiling splitnet and the check"
npx tsc -p scripts/gpu-check/tsconfig.json --outDir "$app"
cp bench/torch_alexnet.py "$app/bench/"
node -e 'const p = require("./package.json"); console.log(JSON.stringify({ name: p.name, version: p.version, type: p.type, dependencies: p.dependencies }, null, 2))' >"$app/package.json"

echo "copying the runtime packages (npm ls --omit=dev), pruned to linux-x64 and to what Node loads"
npm ls --omit=dev --all --parseable | grep '/node_modules/' | sed "s|^$root/||" | while read -r p; do
  mkdir -p "$app/$(dirname "$p")" && cp -r "$p" "$app/$p"
done
nm="$app/node_modules"
find "$nm" \( -name '*.map' -o -name '*.d.ts' -o -name '*.md' -o -name '*.ts' -o -name '*.tsbuildinfo' \) -type f -delete
rm -rf "$nm/@types" "$nm/@webgpu" "$nm/webgpu/node_modules" "$nm/node-addon-api" "$nm/zeromq/src" "$nm/zeromq/script"
for d in "$nm"/webgpu/dist/*; do [ "$(basename "$d")" = linux-x64 ] || rm -rf "$d"; done
for d in "$nm"/zeromq/build/*/; do [ "$(basename "$d")" = linux ] || rm -rf "$d"; done # keeps build/manifest.json
for d in "$nm"/zeromq/build/linux/*/; do [ "$(basename "$d")" = x64 ] || rm -rf "$d"; done
# tfjs packages: Node loads each package's "main" bundle (and wasm's .wasm files); the
# per-op ES modules and browser bundles beside it are never read.
for p in "$nm"/@tensorflow/*; do
  main="$(node -p "require('$p/package.json').main")"
  find "$p" -type f ! -path "$p/package.json" ! -path "$p/$main" ! -name '*.wasm' -delete
  find "$p" -type d -empty -delete
done
(cd "$stage" && tar -cf - app) | xz -T0 -9 >"$b/app.tar.xz"

echo "compressing this machine's Node ($(node --version))"
xz -T0 -9 -c "$(command -v node)" >"$b/node.xz"

echo "slicing Fashion-MNIST: the first $train_images training images, the whole test set"
data_dir=""
for d in "${SPLITNET_DATA:-}" "$root/data/fashion-mnist" /usr/share/datasets/fashion-mnist; do
  if [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ]; then data_dir="$d"; break; fi
done
[ -n "$data_dir" ] || { echo "gpu-check.sh: Fashion-MNIST not found: run 'splitnet data fetch' or apt-get install dataset-fashion-mnist" >&2; exit 1; }
python3 - "$data_dir" "$b/data" "$train_images" <<'PY'
import gzip, lzma, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def write(name, body):
    with lzma.open(f"{dst}/{name}.xz", "wb", preset=9) as f:
        f.write(body)
for name, count, item in (("train-images-idx3-ubyte", n, 784), ("train-labels-idx1-ubyte", n, 1),
                          ("t10k-images-idx3-ubyte", None, 784), ("t10k-labels-idx1-ubyte", None, 1)):
    raw = gzip.open(f"{src}/{name}.gz").read()
    magic, total = struct.unpack(">II", raw[:8])
    header = 16 if item == 784 else 8
    keep = total if count is None else min(count, total)
    # IDX: the count in the header says how many items follow.
    write(name, struct.pack(">II", magic, keep) + raw[8:header] + raw[header:header + keep * item])
PY

echo "the Vulkan loader and the EGL/GL vendor libraries as .deb files"
if [ -n "${DEBS_DIR:-}" ]; then
  cp "$DEBS_DIR"/*.deb "$b/debs/"
else
  (cd "$b/debs" && apt-get download libvulkan1 libegl1 libglvnd0 >/dev/null) || {
    echo "gpu-check.sh: apt-get download failed (run apt-get update first, or set DEBS_DIR)" >&2; exit 1; }
fi

echo "Mesa's device-select Vulkan layer (one worker per GPU on identical cards) and the libraries it loads"
# Only the layer and its manifest from mesa-vulkan-drivers (the package is 8 MB of drivers the check
# does not need); its libraries' .so files, which run.sh uses only where the machine lacks them.
layer_debs="$(mktemp -d)"
if [ -n "${DEBS_DIR:-}" ] && ls "$DEBS_DIR"/mesa-vulkan-drivers_*.deb >/dev/null 2>&1; then
  cp "$DEBS_DIR"/mesa-vulkan-drivers_*.deb "$DEBS_DIR"/lib{xcb-dri3-0,wayland-client0,drm2,xcb1,ffi8,xau6,xdmcp6,bsd0,md0}_*.deb "$layer_debs/"
else
  (cd "$layer_debs" && apt-get download mesa-vulkan-drivers libxcb-dri3-0 libwayland-client0 libdrm2 libxcb1 libffi8 libxau6 libxdmcp6 libbsd0 libmd0 >/dev/null) || {
    echo "gpu-check.sh: apt-get download of the device-select layer failed (run apt-get update first, or put the .deb files in DEBS_DIR)" >&2; exit 1; }
fi
mkdir -p "$b/layer/share/vulkan/implicit_layer.d" "$b/layer/lib" "$b/layer/deps"
for d in "$layer_debs"/*.deb; do dpkg-deb -x "$d" "$layer_debs/x"; done
cp "$layer_debs/x/usr/share/vulkan/implicit_layer.d/VkLayer_MESA_device_select.json" "$b/layer/share/vulkan/implicit_layer.d/"
cp "$layer_debs/x/usr/lib/x86_64-linux-gnu/libVkLayer_MESA_device_select.so" "$b/layer/lib/"
for so in libxcb-dri3.so.0 libwayland-client.so.0 libdrm.so.2 libxcb.so.1 libffi.so.8 libXau.so.6 libXdmcp.so.6 libbsd.so.0 libmd.so.0; do
  cp -L "$layer_debs/x/usr/lib/x86_64-linux-gnu/$so" "$b/layer/deps/"
done
rm -rf "$layer_debs"

cp scripts/gpu-check/run.sh "$b/run.sh"
chmod +x "$b/run.sh"
tar -cf "$bundle" -C "$stage" gpu-check
size=$(stat -c %s "$bundle")
echo "parts: $(cd "$b" && du -bs node.xz app.tar.xz data debs layer | awk '{printf "%s %.1f MiB; ", $2, $1 / 1048576}')"
if [ "$size" -gt "$limit" ]; then
  echo "gpu-check.sh: $bundle is $((size / 1048576)) MiB, over the 64 MiB limit" >&2
  exit 1
fi
echo "wrote $bundle: $(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }')"
echo "on the GPU machine: tar -xf $(basename "$bundle") && gpu-check/run.sh OUT_DIR"
