"""Running trained networks: records, early exits (engine, ONNX export, the torch-free runtime), explanations.

Imports nothing itself, so the torch-free runtime (:mod:`.deploy`) stays torch-free."""
