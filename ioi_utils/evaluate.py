"""Behavioural evaluation of a model on IOI prompts, as a function and a command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import data, metrics, models


@dataclass
class Evaluation:
    """Logit difference (mean and per prompt), accuracy and IO probability on a dataset."""

    logit_diff: float
    accuracy: float
    io_prob: float
    per_prompt: torch.Tensor  # [batch] logit(IO) - logit(S)

    def __str__(self) -> str:
        return f"logit diff {self.logit_diff:.3f}  accuracy {self.accuracy:.1%}  P(IO) {self.io_prob:.3f}"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


@torch.no_grad()
def collect_end_logits(model, ds: data.IOIDataset, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Logits at END for every prompt, batched: [batch, vocab] on the CPU."""
    dev, out = model_device(model), []
    for start in tqdm(range(0, len(ds), batch_size), desc="evaluating", disable=not progress, leave=False):
        idx = slice(start, start + batch_size)
        logits = model(ds.tokens[idx].to(dev))  # [b, seq, vocab]
        end = ds.positions["END"][idx].to(dev)
        out.append(logits[torch.arange(len(end), device=dev), end].float().cpu())
    return torch.cat(out)


def evaluate(model, ds: data.IOIDataset, batch_size: int = 32, progress: bool = False) -> Evaluation:
    """Evaluate IOI behaviour of a model on a dataset."""
    end = collect_end_logits(model, ds, batch_size, progress)
    per_prompt = metrics.logit_diff(end, ds, per_prompt=True)
    return Evaluation(per_prompt.mean().item(), metrics.accuracy(end, ds).item(),
                      metrics.io_prob(end, ds).item(), per_prompt)


def main(argv: list[str] | None = None) -> None:
    """Command line: evaluate a model on held-out IOI prompts."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m", help=f"one of {', '.join(models.KNOWN_MODELS)}, a HF folder or hub name")
    ap.add_argument("--n", type=int, default=500, help="number of held-out prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    if a.n < 1 or a.batch_size < 1:
        ap.error("--n and --batch-size must be >= 1")
    try:
        model, tok = models.load_model(a.model, device=a.device, seed=a.seed)
    except (models.ModelUnavailableError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    ds = data.make_ioi_dataset(tok, n=a.n * 5, seed=a.seed, prepend_bos=model.prepend_bos)
    _, test = data.train_test_split(ds, test_fraction=0.2, seed=a.seed)
    result = evaluate(model, test[: a.n], a.batch_size, progress=True)
    print(f"{a.model}: {len(test[: a.n])} held-out prompts  {result}")


if __name__ == "__main__":
    main()
