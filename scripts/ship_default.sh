#!/usr/bin/env bash
# After the GPU run: put the models of scripts/train_default_gpu.sh into checkpoints/ and refit, on the CPU,
# what ships with the default (tuned lens, frontier probe, SAE) and its card's latent-search section.
#
#   scripts/ship_default.sh GPU_OUT     # the folder holding the GPU run's *.tar files and SUMMARY.json
#
# 1. Unpacks prosqa-coconut, prosqa-pause and prosqa-no-thoughts (whichever came back) and checks that each
#    loads; prosqa-coconut-alt stays out of checkpoints/ (the default's card names it and its accuracy).
# 2. Swaps them into $CHECKPOINTS (replacing the old ones of the same names) and removes the at-chance
#    models listed in RETIRE (configs/default keeps their recipe, in-progress/ its phase-1 checkpoint). The
#    notebooks, tests, app and benchmarks that name a retired model must then be pointed at the new ones.
# 3. Refits on the new default, on N generated items (seed 12345, never the validation split): the tuned
#    lens, the frontier probe on the last layer's residual and the TopK SAE on the thoughts; each goes into
#    the checkpoint, tied to its weights by hash.
# 4. `probe analyze` on $DATA beside the pause control writes the default's "Latent search" card section.
#
# Environment: CHECKPOINTS (checkpoints), DATA (../shared/data/prosqa_valid.json), PYTHON (python3),
# N (2000), LENS_EPOCHS (20), SAE_EPOCHS (50), LIMIT (analyze's items; all), RETIRE (prosqa-coconut-mixed
# prosqa-cot). Nothing in $CHECKPOINTS changes until every model has loaded and every refit is done; the swap
# is renames within $CHECKPOINTS, and if it fails the old models are kept in the staging folder it names.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_OUT=${1:?usage: scripts/ship_default.sh GPU_OUT}
CHECKPOINTS=${CHECKPOINTS:-checkpoints}
DATA=${DATA:-../shared/data/prosqa_valid.json}
PYTHON=${PYTHON:-python3}
N=${N:-2000}
LENS_EPOCHS=${LENS_EPOCHS:-20}
SAE_EPOCHS=${SAE_EPOCHS:-50}
RETIRE=${RETIRE:-prosqa-coconut-mixed prosqa-cot}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
probe() { "$PYTHON" -m probe.cli "$@"; }

[ -f "$GPU_OUT/prosqa-coconut.tar" ] || { echo "error: $GPU_OUT/prosqa-coconut.tar: no such file" >&2; exit 2; }
[ -f "$DATA" ] || { echo "error: DATA=$DATA: no such validation file" >&2; exit 2; }
mkdir -p "$CHECKPOINTS"
# staged inside $CHECKPOINTS, so that the swap is renames on one file system
STAGE=$(mktemp -d "$CHECKPOINTS/.ship.XXXXXX")
SWAPPING=0
finish() {
  local rc=$?
  if [ "$rc" != 0 ] && [ "$SWAPPING" = 1 ]; then
    echo "error: the swap into $CHECKPOINTS failed; the old and new models are in $STAGE" >&2
  else
    rm -rf "$STAGE"
  fi
}
trap finish EXIT

echo "== unpacking and loading"
NAMES=()
for name in prosqa-coconut prosqa-pause prosqa-no-thoughts; do
  [ -f "$GPU_OUT/$name.tar" ] || continue
  tar -C "$STAGE" -xf "$GPU_OUT/$name.tar"
  # loads, and a model in RbS's format gets its rbs/ files again (left out of the tar), in the stored bfloat16
  "$PYTHON" -c "import sys; from probe.model.checkpoint import load_checkpoint, write_rbs_files
m, _ = load_checkpoint(sys.argv[1], dtype='bfloat16')
if m.config.data_format == 'rbs': write_rbs_files(m, sys.argv[1])" "$STAGE/$name"
  NAMES+=("$name")
done
echo "loaded: ${NAMES[*]}"

echo "== refitting the default's tuned lens, frontier probe and SAE on $N generated items"
DEFAULT="$STAGE/prosqa-coconut"
probe data generate --n "$N" --seed 12345 --out "$STAGE/gen.json" > /dev/null
probe tuned-lens --ckpt "$DEFAULT" --data "$STAGE/gen.json" --epochs "$LENS_EPOCHS" \
  --out "$DEFAULT/tuned_lens.safetensors" --overwrite
probe probes fit --ckpt "$DEFAULT" --data "$STAGE/gen.json" --target frontier --layer -1 --out "$STAGE/probe"
probe sae train --ckpt "$DEFAULT" --data "$STAGE/gen.json" --epochs "$SAE_EPOCHS" --out "$STAGE/sae"
mkdir -p "$DEFAULT/probes/frontier" "$DEFAULT/sae"
cp "$STAGE"/probe/{probe.json,probe.safetensors,report.json} "$DEFAULT/probes/frontier/"
cp "$STAGE"/sae/{cfg.json,coconut_probe.json,report.json,sae_weights.safetensors} "$DEFAULT/sae/"

echo "== the latent search beside the pause control, into the default's card"
CONTROL=()
[ -d "$STAGE/prosqa-pause" ] && CONTROL=(--control "$STAGE/prosqa-pause")
probe analyze --ckpt "$DEFAULT" ${CONTROL[@]+"${CONTROL[@]}"} --data "$DATA" ${LIMIT:+--limit "$LIMIT"} \
  --out "$STAGE/analysis" --update-card > "$STAGE/analysis.log"
tail -n 15 "$STAGE/analysis.log"

echo "== into $CHECKPOINTS"
SWAPPING=1
mkdir -p "$STAGE/retired"
for name in $RETIRE "${NAMES[@]}"; do
  if [ -e "$CHECKPOINTS/$name" ]; then mv "$CHECKPOINTS/$name" "$STAGE/retired/$name"; fi
done
for name in "${NAMES[@]}"; do mv "$STAGE/$name" "$CHECKPOINTS/$name"; done
SWAPPING=0
ls "$CHECKPOINTS"
