"""Run inside SAELens's virtual environment: write every case of format_cases.py and load it with SAELens.

Usage: python tests/saelens/check_formats.py OUT_DIR. For each case writes OUT_DIR/<n>/ (the SAE directory),
and OUT_DIR/<n>/saelens.json (loaded or the error; its hook, architecture, k) with saelens.safetensors (SAELens's
features and reconstruction of format_cases.inputs()). compare_formats.py then reads them beside our loader.
"""

import json
import sys
import warnings
from pathlib import Path

import sae_lens
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from saelens.format_cases import CASES, inputs  # noqa: E402

out = Path(sys.argv[1])
n = 0
for group, cases in CASES.items():
    for case in cases:
        d = case.write(out / f"{n:03d}")
        n += 1
        record = {"group": group, "name": case.name, "version": sae_lens.__version__}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sae = sae_lens.SAE.load_from_disk(str(d), device="cpu")
                with torch.no_grad():
                    x = inputs()
                    f = sae.encode(x)
                    x_hat = sae.decode(f)
            cfg = sae.cfg
            record.update(status="loaded", architecture=cfg.architecture(), hook=cfg.metadata.hook_name,
                          k=getattr(cfg, "k", None), dtype=str(cfg.dtype),
                          apply_b_dec_to_input=cfg.apply_b_dec_to_input,
                          normalize_activations=cfg.normalize_activations)
            save_file({"features": f.float().contiguous(), "reconstruction": x_hat.float().contiguous()},
                      str(d / "saelens.safetensors"))
        except Exception as e:  # what SAELens refuses, and how
            record.update(status="error", error=f"{type(e).__name__}: {(str(e).splitlines() or [repr(e)])[0][:200]}")
        (d / "saelens.json").write_text(json.dumps(record, default=str))
print(f"SAELens {sae_lens.__version__}: wrote and loaded {n} cases under {out}")
