"""One contract for every readout fitted to a model: the tuned lens, the probes and the SAE (DESIGN.md "Identity").

scikit-learn's contract plus identity:

- fit: a reader is fit from a model (`TunedLens.for_model(model).fit(traces)`, `fit_probes(model, ...)`,
  `fit_halting_probe(model, ...)`, `train_sae(model, ...)`, or `SparseAutoencoder.fit(X, model=model)` on
  activations the model produced), and records `model_hash_ = hash_of(model)`: the hash of what it reads
  (`probe.model.identity`: `readout_hash` for a lens, which reads only through the final norm and unembedding;
  `weights_hash` for a probe or SAE, whose activations any weight shapes). An SAE fit on activations from nowhere
  records None.
- save(path) -> Path: writes the reader and its hash in its own format (docs/formats.md), atomically.
- load(path, model=None): reads it back; given a model, checks it (`check`) and names the file in the refusal.
  The tuned lens takes the model always (`TunedLens.load(path, model)`): a lens applies its model's readout, so it
  is bound to one; and its path is one safetensors file, not a directory (its format, kept).
- check(model): raises the reader's own error (`error`) in one line when the recorded hash is missing (the reader is
  tied to nothing) or is another model's.

Callers (the CLI, the explorer, notebooks) hand over the model, never a hash.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

F = TypeVar("F", bound="Fitted")


class Fitted:
    """A reader fitted to a model. Subclasses set `hash_of` (what of a model the reader reads: weights_hash or
    readout_hash, as a staticmethod), `error` (the reader's error class) and the two refusals `_unhashed` and
    `_another_model`; each holds `model_hash_` (str, or None / "" when it records none) and implements `save` and
    `_read` (the file, unchecked) or `load` itself."""

    hash_of: ClassVar[Callable[[Any], str]]
    error: ClassVar[type[Exception]]

    def check(self, model) -> None:
        """Raise `error` in one line unless this reader records a hash and it is `model`'s (`hash_of(model)`).
        TypeError when given a hash, not a model."""
        if isinstance(model, (str, bytes)):
            raise TypeError(f"{type(self).__name__}.check takes the model (its hash is computed from it), "
                            f"not a hash: got {model[:16]!r}")
        ours = getattr(self, "model_hash_", None)
        if not ours:
            raise self.error(self._unhashed())
        theirs = self.hash_of(model)
        if ours != theirs:
            raise self.error(self._another_model(ours, theirs))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the reader with its recorded hash (its own format, written atomically); returns the path."""
        raise NotImplementedError

    @classmethod
    def _read(cls: type[F], path: Path) -> F:
        raise NotImplementedError

    @classmethod
    def load(cls: type[F], path: str | os.PathLike, model=None) -> F:
        """Read a saved reader; with `model`, refuse one that is not tied to it (`check`, naming the file)."""
        path = Path(path)
        return cls._read(path)._checked(path, model)

    def _checked(self: F, path: str | os.PathLike, model) -> F:
        """self, after `check(model)` (none when model is None), its refusal prefixed with the file."""
        if model is not None:
            try:
                self.check(model)
            except self.error as e:
                raise self.error(f"{path}: {e}") from None
        return self

    def _unhashed(self) -> str:
        """The refusal of a reader that records no hash (without the file: load prefixes it)."""
        raise NotImplementedError

    def _another_model(self, ours: str, theirs: str) -> str:
        """The refusal of a reader fit to the model hashed `ours`, checked against `theirs`."""
        raise NotImplementedError
