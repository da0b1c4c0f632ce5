"""Models: loading a base with its adapters (``load``), the tiny local model (``tiny``), LoRA training (``train``),
its speed machinery (``kernels``) and the W&B run around a training (``tracking``)."""
