"""The file names of everything the toolkit writes and reads, in one place (as SAELens keeps its constants).

A checkpoint directory of ours holds the base model in transformers' own files (HF_CONFIG, HF_WEIGHTS and
the tokenizer's), COCONUT_CONFIG, and when it comes from training TRAINER_STATE and the optimizer's files;
a released one may also ship its readouts: TUNED_LENS, probes under PROBES_DIR, an SAE under SAE_DIR.
"""

# a checkpoint
COCONUT_CONFIG = "coconut.json"
HF_CONFIG = "config.json"  # transformers' names
HF_WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_WEIGHTS = "optimizer.safetensors"
OPTIMIZER_GROUPS = "optimizer.json"

# readouts, saved in a checkpoint or anywhere
TUNED_LENS = "tuned_lens.safetensors"
PROBES_DIR = "probes"
PROBE_CONFIG = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
SAE_DIR = "sae"
SAE_CFG = "cfg.json"  # SAELens's names
SAE_WEIGHTS = "sae_weights.safetensors"
SAE_EXTRA = "coconut_probe.json"  # what SAELens's cfg has no field for

# a trace store, and the reports of the commands
TRACE_MANIFEST = "manifest.json"
REPORT = "report.json"
SUMMARY = "summary.md"
