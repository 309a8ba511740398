"""Run inside the SAELens virtual environment: load our SAE with SAELens and compare with our reference."""

import sys
from pathlib import Path

import sae_lens
import torch
from safetensors.torch import load_file

path = Path(sys.argv[1])
sae = sae_lens.SAE.load_from_disk(str(path), device="cpu")
ref = load_file(str(path / "reference.safetensors"))
with torch.no_grad():  # SAELens computes in the cfg's dtype; ours returns float32 of the same numbers
    f = sae.encode(ref["x"])
    x_hat = sae.decode(f).float()
    f = f.float()
hook = sae.cfg.metadata.hook_name if hasattr(sae.cfg, "metadata") else sae.cfg.meta.hook_name
assert torch.allclose(f, ref["features"], atol=1e-5), (f - ref["features"]).abs().max()
assert torch.allclose(x_hat, ref["reconstruction"], atol=1e-5), (x_hat - ref["reconstruction"]).abs().max()
print(f"SAELens {sae_lens.__version__} loaded {path} ({type(sae).__name__}, hook {hook}): "
      f"features and reconstruction match ours to 1e-5")
