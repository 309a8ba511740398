"""The file names of everything the toolkit writes and reads, in one place (as SAELens keeps its constants).

A training run's directory holds its RUN_CONFIG and its checkpoints (RUN_CHECKPOINT, RUN_CHECKPOINT_STEP; all
matched by RUN_CHECKPOINTS). A checkpoint directory of ours holds the base model in transformers' own files
(HF_CONFIG, HF_WEIGHTS and the tokenizer's, TOKENIZER_CONFIG and TOKENIZER_FILE), COCONUT_CONFIG, its model card MODEL_CARD, and when it comes
from training TRAINER_STATE and the optimizer's files; one in RbS's data format holds RBS_DIR (RBS_CHECKPOINT and
RBS_CONFIG, their own files); a released one may also ship its readouts: TUNED_LENS, probes under PROBES_DIR, an SAE
under SAE_DIR. A command's output directory holds its REPORT (`probe analyze` also its SUMMARY) and its figures, one
HTML page each (FIGURE_SUFFIX) that loads PLOTLY_JS beside it.
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
MODEL_CARD = "README.md"  # the model card (probe.release.card; checkpoint.default_card when none is given)
# transformers' weight files, and the indexes that map each tensor to its shard when they are sharded
HF_WEIGHT_FILES = (HF_WEIGHTS, "pytorch_model.bin")
HF_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# a tokenizer as transformers' save_pretrained writes it: its config, and its vocabulary either as one tokenizers
# file or as a slow tokenizer's files (GPT-2's vocab.json, a sentencepiece model, BERT's vocab.txt)
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GPT2_VOCAB = "vocab.json"  # the one of them in JSON
SLOW_VOCABULARIES = (GPT2_VOCAB, "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
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
# the figures beside a report: the pages of viz.FIGURES (probe analyze) and viz.INTERVENTION_FIGURES (probe
# intervene) are named by their keys + FIGURE_SUFFIX; `probe eval --halt --json FILE` writes its figure as FILE
# with FIGURE_SUFFIX for its suffix
FIGURE_SUFFIX = ".html"
PLOTLY_JS = "plotly.min.js"  # plotly.js, once per folder (cli.common.write_html)
PROBE_SCORES_PAGE = "scores.html"  # probe probes fit
SAE_FEATURES_PAGE = "features.html"  # probe sae train

# the official ProsQA validation split (facebookresearch/coconut's data/), which the explorer reads from ../shared/data
OFFICIAL_VALID = "prosqa_valid.json"
