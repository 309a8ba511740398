"""coconut-probe: an interpretability toolkit for Coconut (continuous-thought) models.

The package is built in floors (DESIGN.md; tests/test_floors.py keeps it so); a module imports only from its own
floor or the floors below:

    files (artifacts, atomic, formats: here) -> data -> model -> capture | train -> readouts -> analyses -> viz
    -> release -> cli

The files at this root are the ground floor: the names of every file, writes that leave nothing half-written, the
rules every reader of a file follows. They import nothing of probe.
"""
