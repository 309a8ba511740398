"""Floor 7, release: a released checkpoint (its evaluation, readouts and model card) and the model cards.
Imports every floor below."""
