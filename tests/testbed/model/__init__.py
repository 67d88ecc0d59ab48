"""Test model for the TorchServe test bed: a tiny TorchScript classifier, its fault-injecting
handler, TorchServe's metrics config with the handler's per-version metrics, and the archive
builder (see build.py and docs/testing/serving.md)."""
