"""Floor 1, data: ProsQA items (the official format and RbS's), graphs and their node groups, the generator,
rendering to token sequences, training streams. Imports only the files floor (probe.artifacts, probe.atomic,
probe.formats)."""
