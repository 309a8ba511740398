"""Floor 2, model: the Coconut wrapper and its latent loop, tokenizers, checkpoint formats (ours, official, RbS),
the planted model, hook names, the one hook primitive and the one reader of activations (hooks.read_at), the
model's answers and their accuracy (evaluate), torchrun's ranks. Imports data and the files floor."""
