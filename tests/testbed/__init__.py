"""Test bed of real components (Prometheus, TorchServe, kube-apiserver+kwok, OpenBao, podman nodes).

Each component lives in its own module and exposes a ``Component`` subclass
plus a session-scoped pytest fixture; ``scripts/testbed`` starts the same
components by hand for debugging.
"""
