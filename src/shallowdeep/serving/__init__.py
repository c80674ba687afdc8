"""Serving early exits over HTTP: requests batched between the engine's stages (``shallowdeep serve``)."""
