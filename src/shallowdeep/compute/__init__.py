"""Where the computation runs: device choice and the torchrun process group."""
