"""The bottom layer: errors, atomic file I/O and safetensors/JSON helpers. Knows no model."""
