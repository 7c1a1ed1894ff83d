"""Command line: a model's IOI behaviour on held-out prompts (`measures.behaviour.evaluate`).

    python -m ioi_utils.evaluate --model smollm2-135m --n 500
"""

from __future__ import annotations

import argparse

from ioi_utils import models
from ioi_utils.measures.behaviour import evaluate
from ioi_utils.prompts import data


def main(argv: list[str] | None = None) -> None:
    """Command line: evaluate a model on held-out IOI prompts."""
    ap = argparse.ArgumentParser(prog="python -m ioi_utils.evaluate",
                                 description=__doc__.splitlines()[0])
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
