"""Floor 3, capture: every thought at every layer -> ThoughtTrace, trace stores on disk, capture past one
process, and the TransformerLens bridge. Imports model, data and the files floor; never train (its sibling)."""
