"""Read the cases check_formats.py loaded in SAELens with our loader, and compare (run in the project's venv).

Usage: python tests/saelens/compare_formats.py OUT_DIR. Each case says what SAELens should do with it: "same"
(loads it, and we read the same hook, architecture and k and compute the same features and reconstruction),
"error" (refuses it), "differs" (loads it as something the SAELens that wrote the file did not compute, which is
why we refuse it) or "skip". Prints one line per case and exits 1 if any disagrees.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from probe.readouts.sae import SAEError, SparseAutoencoder  # noqa: E402
from saelens.format_cases import CASES, inputs  # noqa: E402

out = Path(sys.argv[1])
cases = [c for group in CASES.values() for c in group]
bad = 0
for i, case in enumerate(cases):
    d = out / f"{i:03d}"
    theirs = json.loads((d / "saelens.json").read_text())
    try:
        ours = SparseAutoencoder.load(d)
    except SAEError as e:
        ours = e
    verdict = "ok"
    if case.saelens == "same":
        if theirs["status"] != "loaded" or isinstance(ours, SAEError):
            ours_did = "refused" if isinstance(ours, SAEError) else "read"
            verdict = f"MISMATCH: SAELens {theirs['status']}, ours {ours_did}"
        else:
            ref = load_file(str(d / "saelens.safetensors"))
            x = inputs()
            tol = dict(atol=1e-2, rtol=1e-2) if ours.dtype in ("float16", "bfloat16") else dict(atol=1e-5, rtol=1e-5)
            same = (theirs["hook"] == ours.hook_name_ and theirs["architecture"] == ours.architecture
                    and (theirs["k"] == ours.k or ours.architecture != "topk")
                    and torch.allclose(ours.encode(x).float(), ref["features"], **tol)
                    and torch.allclose(ours.reconstruct(x).float(), ref["reconstruction"], **tol))
            exact = (torch.equal(ours.encode(x).float(), ref["features"])
                     and torch.equal(ours.reconstruct(x).float(), ref["reconstruction"]))
            verdict = ("ok (bit-identical)" if exact else "ok (within tolerance)") if same else \
                f"MISMATCH: hook {theirs['hook']!r}/{ours.hook_name_!r}, arch {theirs['architecture']}/" \
                f"{ours.architecture}, k {theirs['k']}/{ours.k}"
    elif case.saelens == "error":
        if theirs["status"] != "error":
            verdict = "MISMATCH: SAELens loads it"
        else:
            verdict = f"ok (SAELens: {theirs['error'][:90]})"
    elif case.saelens == "differs":
        if theirs["status"] != "loaded":
            verdict = f"MISMATCH: SAELens refuses it ({theirs['error'][:90]})"
        else:
            verdict = (f"ok (SAELens loads it: {theirs['architecture']}, hook {theirs['hook']!r}"
                       f"{', k ' + str(theirs['k']) if theirs['k'] is not None else ''})")
    else:
        verdict = f"skip (SAELens: {theirs['status']} {theirs.get('error', '')[:80]})"
    refused = isinstance(ours, SAEError)
    if (case.expect is None) != refused:
        verdict = "MISMATCH with the test's expectation"
    bad += verdict.startswith("MISMATCH")
    print(f"{case.saelens:8} {'refused' if refused else 'read':8} {case.name}: {verdict}")
print(f"{len(cases) - bad} of {len(cases)} cases agree with SAELens {theirs['version']}")
sys.exit(1 if bad else 0)
