#!/usr/bin/env bash
# Generates the tiny random Gemma 3 (tests/serving/make_tiny_gemma.py: Gemma3ForCausalLM, bf16, a
# byte-level BPE tokenizer and Gemma's chat template) into a directory, with the vLLM CPU image on the
# real node: the image has torch and transformers, so the host needs no multi-GB venv for it.
#
#   hack/tiny-model.sh OUT_DIR      (OUT_DIR/config.json afterwards; kept when it is there already)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out=$(mkdir -p "$1" && cd "$1" && pwd)
if [ -f "$out/config.json" ]; then exit 0; fi
image=$(bash "$REPO_ROOT/hack/images.sh" names | sed -n 's/^vllm-cpu=//p')
bash "$REPO_ROOT/hack/node.sh" image-current-name "$image" || bash "$REPO_ROOT/hack/images.sh" vllm-cpu
work="$out.tmp"
rm -rf "$work" && mkdir -p "$work" && chmod 0777 "$work"
log "generating the tiny Gemma 3 with $image"
bash "$REPO_ROOT/hack/node.sh" ctr run --rm \
  --mount "type=bind,src=$work,dst=/out,options=rbind:rw" \
  --mount "type=bind,src=$REPO_ROOT/tests/serving/make_tiny_gemma.py,dst=/gen/make_tiny_gemma.py,options=rbind:ro" \
  --env HF_HOME=/tmp/hf --env HF_HUB_OFFLINE=1 \
  "$image" "gemma-tiny-model-$$" python /gen/make_tiny_gemma.py /out/model >/dev/null
mv "$work/model/"* "$out/" && rm -rf "$work"
chmod -R a+rX "$out"
