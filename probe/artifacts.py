"""The file names of everything the toolkit writes and reads, in one place (as SAELens keeps its constants).

A training run's directory holds its RUN_CONFIG and its checkpoints (RUN_CHECKPOINT, RUN_CHECKPOINT_STEP; all
matched by RUN_CHECKPOINTS). A checkpoint directory of ours holds the base model in transformers' own files
(HF_CONFIG, HF_WEIGHTS and the tokenizer's), COCONUT_CONFIG, a MODEL_CARD, and when it comes from training
TRAINER_STATE and the optimizer's files;
one in RbS's data format holds RBS_DIR (RBS_CHECKPOINT and RBS_CONFIG, their own files);
a released one may also ship its readouts: TUNED_LENS, probes under PROBES_DIR, an SAE under SAE_DIR.
"""

# a training run's directory (probe train); its checkpoint names sort in training order
RUN_CONFIG = "config.yaml"  # the run's whole TrainConfig
RUN_CHECKPOINT = "epoch-{epoch:03d}"  # after `epoch` whole epochs
RUN_CHECKPOINT_STEP = "epoch-{epoch:03d}-step-{step:07d}"  # inside epoch + 1, at optimizer step `step`
RUN_CHECKPOINTS = "epoch-*"  # the glob of both
RANK_ERROR = "error-rank{rank}.txt"  # under torchrun: the traceback of a rank that failed

# a checkpoint
COCONUT_CONFIG = "coconut.json"
MODEL_CARD = "README.md"
HF_CONFIG = "config.json"  # transformers' names
HF_WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_WEIGHTS = "optimizer.safetensors"
OPTIMIZER_GROUPS = "optimizer.json"
# a checkpoint in RbS's data format also holds their files, which their code loads (docs/rbs-notes.md, section 4)
RBS_DIR = "rbs"
RBS_CHECKPOINT = "checkpoint"  # torch.save of their Coconut wrapper's state dict
RBS_CONFIG = "config.json"  # their GPT-2's config

# a torch.distributed.checkpoint directory (FSDP's sharded state dict), which the loader refuses by name
DCP_METADATA = ".metadata"
DCP_SUFFIX = ".distcp"

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
