"""Write the test model: a scripted Linear(4 -> 2) + softmax, deterministic weights.

Batch-invariant: the linear layer is computed row by row (elementwise product and sum over the 4
features) rather than with a matrix product, whose BLAS kernel differs between one row (GEMV)
and several (GEMM) and so changes the last bits of the answer. A request's answer is therefore
bitwise the same whether the handler runs it alone or stacked in a batch.

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
        # [n, 1, 4] * [2, 4] -> [n, 2, 4] -> sum over the features: each row reduced on its own
        logits = (x.unsqueeze(1) * self.linear.weight).sum(-1) + self.linear.bias
        return torch.softmax(logits, dim=-1)


def main(out: str) -> None:
    torch.manual_seed(0)
    model = torch.jit.script(Classifier().eval())
    model.save(out)


if __name__ == "__main__":
    main(sys.argv[1])
