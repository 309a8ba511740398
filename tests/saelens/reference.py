"""Write reference.safetensors into an SAE directory: fixed inputs and our features and reconstruction."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from probe.readouts.sae import SparseAutoencoder

path = Path(sys.argv[1])
sae = SparseAutoencoder.load(path)
x = torch.randn(64, sae.W_enc_.shape[0], generator=torch.Generator().manual_seed(0))
f = sae.encode(x)
save_file({"x": x, "features": f, "reconstruction": sae.reconstruct(x)}, str(path / "reference.safetensors"))
print(f"wrote {path / 'reference.safetensors'}")
