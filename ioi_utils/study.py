"""The shared setup of the chapters: one model, one split, one ABC set, one base circuit per profile."""

from __future__ import annotations

from dataclasses import dataclass

from . import circuits, data, evaluate, models, results


@dataclass
class Study:
    """A model and the datasets every analysis of a chapter uses."""

    model_name: str
    model: object
    tokenizer: object
    train: data.IOIDataset
    test: data.IOIDataset  # held-out clean prompts, used by every analysis
    abc: data.IOIDataset  # the test prompts with three fresh names (Wang's p_ABC)
    seed: int


def split_sizes(n_prompts: int, n_eval: int) -> tuple[int, float]:
    """Total prompts to generate and the test fraction that leaves n_eval held out."""
    if n_prompts < 1 or n_eval < 1:
        raise ValueError(f"n_prompts and n_eval must be >= 1, got {n_prompts} and {n_eval}")
    return n_prompts + n_eval, n_eval / (n_prompts + n_eval)


def clean_split(tokenizer, prepend_bos: bool, n_prompts: int, n_eval: int, seed: int):
    """(train, test): n_prompts training prompts and n_eval held-out prompts, disjoint."""
    total, frac = split_sizes(n_prompts, n_eval)
    return data.train_test_split(data.make_ioi_dataset(tokenizer, total, seed, prepend_bos), frac, seed)


def prepare(model_name: str, n_prompts: int, n_eval: int, seed: int = 0, device: str = "auto") -> Study:
    """Load the base model and build the clean split and the ABC set."""
    model, tok = models.load_model(model_name, device=device, seed=seed)
    train, test = clean_split(tok, model.prepend_bos, n_prompts, n_eval, seed)
    return Study(model_name, model, tok, train, test, data.make_abc_dataset(test, seed=seed + 1), seed)


def discover_cached(study: Study, model, tag: str, thresholds: circuits.Thresholds = circuits.Thresholds(),
                    progress: bool = True) -> circuits.Discovery:
    """Circuit discovery on `model` (tagged e.g. 'base' or a run/epoch), computed once and memoised."""
    return results.memo("discovery", lambda: circuits.discover(model, study.test, study.abc, thresholds, progress),
                        model=study.model_name, tag=tag, data=study.test.fingerprint(), thresholds=thresholds)


def behaviour(model, study: Study) -> evaluate.Evaluation:
    """Held-out IOI behaviour of a model."""
    return evaluate.evaluate(model, study.test)


def checkpoint_row(study_: Study, model, tag: str, base_circuit: circuits.Circuit, epoch: int) -> dict:
    """Behaviour, base-circuit faithfulness and a re-discovered circuit of one checkpoint (memoised)."""
    def compute() -> dict:
        ev = behaviour(model, study_)
        own = discover_cached(study_, model, tag).circuit
        f_base = circuits.faithfulness(model, study_.test, study_.abc, base_circuit)
        f_own = circuits.faithfulness(model, study_.test, study_.abc, own)
        return {"epoch": epoch, "logit_diff": ev.logit_diff, "accuracy": ev.accuracy,
                "faithfulness_base_circuit": f_base.ratio, "faithfulness_own_circuit": f_own.ratio,
                "circuit_size": len(own.heads), "circuit": own.to_json()}
    return results.memo("checkpoint_row", compute, model=study_.model_name, tag=tag,
                        data=study_.test.fingerprint(), base=base_circuit.to_json())


def rows_table(rows: list[dict]) -> str:
    """A plain-text table of checkpoint rows."""
    head = f"{'epoch':>6} {'logit diff':>10} {'accuracy':>9} {'F base circuit':>15} {'F own circuit':>14} {'heads':>6}"
    lines = [f"{r['epoch']:>6} {r['logit_diff']:>10.3f} {r['accuracy']:>9.1%} {r['faithfulness_base_circuit']:>15.1%} "
             f"{r['faithfulness_own_circuit']:>14.1%} {r['circuit_size']:>6}" for r in rows]
    return "\n".join([head] + lines)


def gain_share(model_x, model_y, ds: data.IOIDataset, heads) -> float:
    """Share of the logit-difference gap between x and y that patching x's `heads` into y recovers."""
    from . import patching

    ld_x, ld_y = evaluate.evaluate(model_x, ds).logit_diff, evaluate.evaluate(model_y, ds).logit_diff
    if abs(ld_x - ld_y) < 1e-6 or not heads:
        return float("nan")
    return (patching.cmap_group(model_x, model_y, ds, heads) - ld_y) / (ld_x - ld_y)


def localization(effects, heads) -> float:
    """(share of total |CMAP effect| on `heads`) / (share of all heads that `heads` are): 1 = not localized."""
    total = effects.abs().sum().item()
    if total == 0 or not heads:
        return float("nan")
    inside = sum(abs(effects[h].item()) for h in heads)
    return (inside / total) / (len(heads) / effects.numel())
