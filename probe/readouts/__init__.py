"""Floor 4, readouts: what reads node values out of activations: the logit and tuned lens, node values,
linear probes, SAEs (and SAELens's files); everything fitted to a model follows one contract (fitted.Fitted).
Imports capture, model, data and the files floor."""
