#!/usr/bin/env bash
# The default model and its controls, trained side by side on one GPU within one wall-clock budget,
# released with their model cards, and packed for the trip back (each file under 16 MiB).
#
#   scripts/train_default_gpu.sh OUT_DIR
#
# Runs configs/rbs/{coconut,coconut_newest,pause,no_thoughts}.yaml at once, each with --max-minutes
# $MINUTES (the trainer times its batches and sizes its epochs so that the whole curriculum and a
# final evaluated checkpoint fit), then `probe release` on each (accuracy on $DATA at k = 0..6 and at
# the gold depth; bfloat16 weights). The better of the two Coconut runs by validation accuracy at the
# default k becomes prosqa-coconut; the other is kept as prosqa-coconut-alt, and both cards say so.
# OUT_DIR/SUMMARY.json and the last lines printed hold every accuracy and timing.
#
# On the lent GPU machine only the checkout travels: carry a copy of the validation split in the ignored
# folder .device/ (run's carry=[".device"]) and pass DATA=.device/prosqa_valid.json.
#
# Environment: DEVICE (cuda), MINUTES (5.5), DATA (../shared/data/prosqa_valid.json), PYTHON (python3),
# RUNS (the four above), PROBE_SET (extra --set OPTION=VALUE words for every run: the CPU smoke test
# shrinks the model and the data this way).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/train_default_gpu.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-5.5}
DATA=${DATA:-../shared/data/prosqa_valid.json}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-coconut coconut_newest pause no_thoughts}
read -r -a SET <<< "${PROBE_SET:-}"
SETS=()
for s in "${SET[@]}"; do SETS+=(--set "$s"); done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
probe() { "$PYTHON" -m probe.cli "$@"; }

[ -f "$DATA" ] || { echo "error: DATA=$DATA: no such validation file" >&2; exit 2; }
[ -e "$OUT" ] && { echo "error: $OUT already exists; choose a new directory" >&2; exit 2; }
mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/release"
START=$(date +%s)

echo "== training side by side on $DEVICE, $MINUTES min each: $RUNS"
pids=()
for run in $RUNS; do
  probe train --config "configs/rbs/$run.yaml" --device "$DEVICE" --max-minutes "$MINUTES" \
    --out-dir "$OUT/runs/$run" --set "val_data=$DATA" "${SETS[@]}" > "$OUT/logs/$run.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { failed=1; echo "training failed: $(echo $RUNS | cut -d' ' -f$((i + 1)))" >&2; }
done
TRAINED=$(date +%s)
for run in $RUNS; do  # each run's last record (JSON), and its last line: its checkpoint, or its error
  echo "[$run] $(grep -a -o '{"epoch.*}' "$OUT/logs/$run.log" | tail -n 1)"
  echo "[$run] $(tr '\r' '\n' < "$OUT/logs/$run.log" | grep -a -E '^(error|last checkpoint)' | tail -n 1)"
done
[ "$failed" = 0 ] || exit 1

echo "== releasing (accuracy on $DATA at every k and at the gold depth)"
pids=()
for run in $RUNS; do
  last=$(ls -d "$OUT/runs/$run"/epoch-* | tail -n 1)
  probe release --ckpt "$last" --out "$OUT/release/$run" --data "$DATA" --config "configs/rbs/$run.yaml" \
    --device "$DEVICE" --store-dtype bfloat16 > "$OUT/logs/release-$run.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { tail -n 5 "$OUT"/logs/release-*.log >&2; exit 1; }

"$PYTHON" - "$OUT" "$RUNS" "$START" "$TRAINED" <<'PY'
import json, sys, time
from pathlib import Path
from probe.artifacts import COCONUT_CONFIG, MODEL_CARD
out, runs, start, trained = Path(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4])
names = {"coconut": "prosqa-coconut", "coconut_newest": "prosqa-coconut", "pause": "prosqa-pause",
         "no_thoughts": "prosqa-no-thoughts"}
summary = {}
for run in runs:
    meta = json.loads((out / "release" / run / COCONUT_CONFIG).read_text())["metadata"]
    ev, hist = meta["evaluation"], meta["training"][-1]["history"]
    summary[run] = {
        "accuracy": ev["accuracy_by_k"][str(ev["default_k"])], "default_k": ev["default_k"],
        "accuracy_by_k": ev["accuracy_by_k"], "gold_accuracy": ev.get("gold_accuracy"),
        "steps": hist[-1]["step"], "epochs": hist[-1]["epoch"], "stage": hist[-1]["stage"],
        "train_seconds": sum(h["seconds"] for h in hist),
        "tokens_per_s": sum(h["tokens_per_s"] * h["seconds"] for h in hist) / max(1e-9, sum(h["seconds"] for h in hist)),
        "tflops": sum(h["tflops"] * h["seconds"] for h in hist) / max(1e-9, sum(h["seconds"] for h in hist)),
        "epoch_items": next((h["epoch_items"] for h in hist if "epoch_items" in h), None),
        "cut_by_budget": hist[-1].get("cut_by_budget"),
        "learning_curve": [(h["step"], h["stage"], round(h["train_loss"], 4), h.get("val_accuracy")) for h in hist],
    }
coconuts = [r for r in runs if r.startswith("coconut")]
best = max(coconuts, key=lambda r: summary[r]["accuracy"]) if coconuts else None
ship = {}
for run in runs:
    name = names.get(run, f"prosqa-{run}")
    if run in coconuts and run != best:
        name = "prosqa-coconut-alt"
    ship[run] = name
    card = out / "release" / run / MODEL_CARD
    lines = card.read_text().split("\n")
    lines[0] = f"# {name}"
    if run in coconuts and len(coconuts) > 1:
        others = ", ".join(f"`{r}` {summary[r]['accuracy']:.1%}" for r in coconuts if r != run)
        verdict = "the default (checkpoints/prosqa-coconut)" if run == best else "kept beside the default"
        lines.insert(2, f"Trained side by side with the other Coconut run(s) of the GPU script at the same budget; "
                        f"{verdict}, chosen by validation accuracy at the default k: this run (`{run}`) "
                        f"{summary[run]['accuracy']:.1%}, {others}.\n")
    card.write_text("\n".join(lines))
    (out / "release" / run).rename(out / "release" / name)
result = {"runs": summary, "shipped_as": ship, "best_coconut": best, "seconds_training": trained - start,
          "seconds_total": int(time.time()) - start}
(out / "SUMMARY.json").write_text(json.dumps(result, indent=1))
print(json.dumps({r: {k: v for k, v in s.items() if k != "learning_curve"} for r, s in summary.items()}, indent=1))
print(f"best Coconut run: {best}; shipped as {ship}")
PY

for dir in "$OUT"/release/*/; do  # rbs/ (RbS's copy of the weights) stays here: ship_default.sh writes it again
  name=$(basename "$dir")
  tar -C "$OUT/release" --exclude "$name/rbs" -cf "$OUT/$name.tar" "$name"
done
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs
END=$(date +%s)
echo "== packed: $(cd "$OUT" && ls -la *.tar logs.tar.gz SUMMARY.json | awk '{print $5, $9}' | tr '\n' ';')"
echo "== minutes: training $(( (TRAINED - START) / 60 )):$(printf %02d $(( (TRAINED - START) % 60 ))), all $(( (END - START) / 60 )):$(printf %02d $(( (END - START) % 60 )))"
