"""Write the test model: a scripted Linear(4 -> 2) + softmax, deterministic weights.

Runs under the TorchServe venv's python (it needs torch):
    $GPUOPS_CACHE/torchserve-venv/bin/python make_model.py OUT.pt
"""

import sys

import torch


class Classifier(torch.nn.Module):
    """Two-class classifier over 4 features; small enough to run on any CPU."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def main(out: str) -> None:
    torch.manual_seed(0)
    model = torch.jit.script(Classifier().eval())
    model.save(out)


if __name__ == "__main__":
    main(sys.argv[1])
