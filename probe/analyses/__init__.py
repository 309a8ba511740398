"""Floor 5, analyses: pure functions over captured tensors and graphs: frontier measures, superposition,
interventions, the findings table, decoding thoughts, RbS's notebook measures, the planted model's known
answers. Imports readouts and every floor below."""
