from probe.cli import app

# `python -m probe.cli ...`, and the torchrun entry point: `torchrun --nproc_per_node N -m probe.cli capture ...`
app(prog_name="probe")
