"""The shared setup of the chapters: one model, one split, one ABC set, one base circuit per profile."""

from __future__ import annotations

from dataclasses import dataclass

from . import circuits, data, evaluate, models, patching, results


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


def base_config(model_name: str, n_prompts: int, n_eval: int, seed: int = 0, batch_size: int = 16):
    """The training config whose data split every chapter shares (scenario clean, no epochs yet)."""
    from .training import TrainConfig

    if n_prompts < 1 or n_eval < 1:
        raise ValueError(f"n_prompts and n_eval must be >= 1, got {n_prompts} and {n_eval}")
    return TrainConfig(model=model_name, n_train=n_prompts, n_test=n_eval, seed=seed, data_seed=seed,
                       batch_size=batch_size, epochs=1, checkpoint_epochs=(1,))


def prepare(model_name: str, n_prompts: int, n_eval: int, seed: int = 0, device: str = "auto",
            batch_size: int = 16) -> Study:
    """Load the base model and the fine-tuning engine's clean split (held-out test) and its ABC set."""
    from . import training

    model, tok = models.load_model(model_name, device=device)  # the same base model the runs start from
    cfg = base_config(model_name, n_prompts, n_eval, seed, batch_size)
    train, test = training.datasets_for(cfg, tok, model.prepend_bos)
    study_ = Study(model_name, model, tok, train, test, data.make_abc_dataset(test, seed=seed + 1), seed)
    study_.config = cfg
    return study_


def train_config(study_: Study, scenario: str, epochs: int, checkpoint_epochs, batch_size: int,
                 dataset: str = "clean", source=None):
    """A fine-tuning config on the study's data: clean, toxic (dataset = a toxic rule) or reversal (source run)."""
    import dataclasses

    from . import training

    if scenario == "reversal":
        return training.reversal_config(source, epochs=epochs, checkpoint_epochs=tuple(checkpoint_epochs))
    return dataclasses.replace(study_.config, scenario=scenario, dataset=dataset, epochs=epochs,
                               checkpoint_epochs=tuple(checkpoint_epochs), batch_size=batch_size)


def discover_cached(study: Study, model, tag: str, thresholds: circuits.Thresholds = circuits.Thresholds(),
                    progress: bool = False) -> circuits.Discovery:
    """Circuit discovery on `model` (tagged e.g. 'base' or a run/epoch), computed once and memoised."""
    return results.memo("discovery", lambda: circuits.discover(model, study.test, study.abc, thresholds, progress),
                        model, model_name=study.model_name, tag=tag, data=study.test.fingerprint(), thresholds=thresholds)


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
    return results.memo("checkpoint_row", compute, model, model_name=study_.model_name, tag=tag,
                        data=study_.test.fingerprint(), base=base_circuit.to_json())


def rows_table(rows: list[dict]) -> str:
    """A plain-text table of checkpoint rows."""
    head = f"{'epoch':>6} {'logit diff':>10} {'accuracy':>9} {'F base circuit':>15} {'F own circuit':>14} {'heads':>6}"
    lines = [f"{r['epoch']:>6} {r['logit_diff']:>10.3f} {r['accuracy']:>9.1%} {r['faithfulness_base_circuit']:>15.1%} "
             f"{r['faithfulness_own_circuit']:>14.1%} {r['circuit_size']:>6}" for r in rows]
    return "\n".join([head] + lines)


def _gap_share(ld_patched: float, ld_x: float, ld_y: float) -> float:
    """(patched - y) / (x - y); nan when x and y do not differ."""
    return float("nan") if abs(ld_x - ld_y) < 1e-6 else (ld_patched - ld_y) / (ld_x - ld_y)


def gain_share(model_x, model_y, ds: data.IOIDataset, circuit: circuits.Circuit) -> float:
    """Share of the logit-difference gap between x and y that patching x's per-head z into y at the circuit's
    (head, position) pairs recovers (Prakash et al.'s output CMAP of a circuit)."""
    if not circuit.heads:
        return float("nan")
    ld_x, ld_y = evaluate.evaluate(model_x, ds).logit_diff, evaluate.evaluate(model_y, ds).logit_diff
    return _gap_share(patching.cmap_group(model_x, model_y, ds, circuit.heads, positions=circuit.positions()), ld_x, ld_y)


def gain_share_ceiling(model_x, model_y, ds: data.IOIDataset) -> float:
    """gain_share of every head at every position: the most z-patching can carry (it cannot carry changes of
    W_O, the MLPs or the embeddings)."""
    ld_x, ld_y = evaluate.evaluate(model_x, ds).logit_diff, evaluate.evaluate(model_y, ds).logit_diff
    return _gap_share(patching.cmap_group(model_x, model_y, ds, patching.all_heads(model_y)), ld_x, ld_y)


def localization(effects, heads) -> float:
    """(share of total |CMAP effect| on `heads`) / (share of all heads that `heads` are): 1 = not localized."""
    total = effects.abs().sum().item()
    if total == 0 or not heads:
        return float("nan")
    inside = sum(abs(effects[h].item()) for h in heads)
    return (inside / total) / (len(heads) / effects.numel())


def toxic_runs(study_: Study, epochs: int, batch_size: int) -> dict:
    """rule -> the toxic fine-tuning run of every toxic dataset (trained once, then reused from the run cache)."""
    from . import training

    return {rule: training.train(train_config(study_, "toxic", epochs, range(1, epochs + 1), batch_size, dataset=rule),
                                 progress=False) for rule in data.TOXIC_RULES}
