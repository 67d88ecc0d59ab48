"""Write the test model: a scripted classifier over 4 features, 2 classes, deterministic weights.

- default (``--hidden 0``): Linear(4 -> 2) + softmax, what the test bed serves: costs nothing.
- ``--hidden H``: an MLP 4 -> H -> H -> H -> 2 (ReLU) + softmax, whose forward pass costs
  something (about 1 ms for one row at H=512 on one core); scripts/bench/torchserve_tuning.py
  ``--model-hidden`` serves it on both sides, so batching is measured on a model whose forward pass
  matters, as it does on a real one.

Batch-invariant, both: every layer is computed row by row (the tiny one as an elementwise product
and sum over the 4 features, the MLP as one matrix-vector product per row, torch.bmm) rather than
with one matrix product over the batch, whose BLAS kernel differs between one row (GEMV) and
several (GEMM) and so changes the last bits of the answer. A request's answer is therefore bitwise
the same whether the handler runs it alone or stacked in a batch. (A GEMM would make a batch of
the MLP cheaper still: the row-wise form understates what batching saves on the forward pass.)

Runs under the TorchServe venv's python (it needs torch):
    $GPUOPS_CACHE/torchserve-venv/bin/python make_model.py OUT.pt [--hidden H]
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


class MLPClassifier(torch.nn.Module):
    """4 -> hidden -> hidden -> hidden -> 2, ReLU, softmax; one matrix-vector product per row."""

    def __init__(self, hidden: int):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, hidden),
                                           torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # [n, 1, in] @ [n, in, out] (the weight expanded, not copied): n row-wise products
            x = torch.bmm(x.unsqueeze(1), layer.weight.t().unsqueeze(0).expand(n, -1, -1)).squeeze(1) + layer.bias
            if i < last:
                x = torch.relu(x)
        return torch.softmax(x, dim=-1)


def main(out: str, hidden: int = 0) -> None:
    torch.manual_seed(0)
    model = torch.jit.script((MLPClassifier(hidden) if hidden > 0 else Classifier()).eval())
    model.save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    hidden_arg = 0
    if "--hidden" in args:
        i = args.index("--hidden")
        hidden_arg = int(args[i + 1])
        del args[i:i + 2]
    main(args[0], hidden_arg)
