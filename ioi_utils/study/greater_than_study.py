"""The Greater-Than chapter's setup and analyses: IOI's machinery (admission, faithfulness, MLP knockout,
fine-tuning, CMAP) run on `greater_than` datasets, each memoised in `results`."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from jaxtyping import Float

from ioi_utils.circuits import admission, checks
from ioi_utils.mechanisms import attribution
from ioi_utils import circuits, models
from ioi_utils.measures import metrics
from ioi_utils.storage import results
from ioi_utils.finetuning import run_spec, training
from ioi_utils.circuits import circuit_of
from ioi_utils.prompts import greater_than
from ioi_utils.prompts.greater_than import TASK, corrupt, make_gt_dataset, split
from ioi_utils.mechanisms import activation_patching, knockouts
from ioi_utils.profiles import Profile
from ioi_utils.study import Study


TOXIC_DATASET = "earlier-year"  # the toxic run the chapter trains (book/greater_than.py: dataset="earlier-year")


def prepare(model_name: str, n_train: int, n_eval: int, n_discovery: int, n_epoch_eval: int, seed: int = 0,
            device: str = "auto", batch_size: int = 16, threads: int | None = None) -> Study:
    """Load the model and draw train | held-out | discovery prompts from one shuffled pool (disjoint); the
    fine-tuning runs evaluate each epoch on the first n_epoch_eval held-out prompts."""
    if not 1 <= n_epoch_eval <= n_eval:
        raise ValueError(f"need 1 <= n_epoch_eval <= n_eval, got {n_epoch_eval} and {n_eval}")
    models.pin_threads(threads)
    model, tok = models.load_model(model_name, device=device)
    pool = make_gt_dataset(tok, n_train + n_eval + n_discovery, seed, model.prepend_bos)
    train, test, disc = split(pool, [n_train, n_eval, n_discovery])
    cfg = split_config(model_name, n_train, n_epoch_eval, seed, batch_size)
    got_train, got_test = run_spec.datasets_for(cfg, tok, model.prepend_bos)
    assert got_train.prompts == train.prompts and got_test.prompts == test.prompts[:n_epoch_eval]
    return Study(model_name, model, tok, train, test, corrupt(test), seed, disc, corrupt(disc), cfg)


def prepare_for(p: Profile) -> Study:
    """`prepare` with a profile's Greater-Than model and sizes (`gt_*`), seed, device, batch size and threads."""
    return prepare(p.gt_model_name, p.gt_n_train, p.gt_n_eval, p.gt_n_discovery, p.gt_n_epoch_eval, p.seed, p.device,
                   p.batch_size, p.threads)


def vocabulary_counts(study_: Study) -> tuple[int, int]:
    """How many nouns and how many start years the prompts draw from: the nouns that are one token, the years whose
    prompt changes only in the year's own tokens, for the study's tokenizer (`greater_than.nouns_for`,
    `greater_than.valid_years`)."""
    return len(greater_than.nouns_for(study_.tokenizer)), len(greater_than.valid_years(study_.tokenizer))


def split_config(model_name: str, n_train: int, n_epoch_eval: int, seed: int = 0,
                 batch_size: int = 16) -> run_spec.TrainConfig:
    """The training config of the chapter's split (clean, no epochs yet), without loading the model."""
    return run_spec.TrainConfig(model=model_name, task=TASK, n_train=n_train, n_test=n_epoch_eval, seed=seed,
                                data_seed=seed, batch_size=batch_size, epochs=1, checkpoint_epochs=(1,))


def run_config(base: run_spec.TrainConfig, scenario: str, epochs: int, batch_size: int,
               dataset: str = "clean") -> run_spec.TrainConfig:
    """The config of a scenario's fine-tuning run on the split of `base` (`split_config`), every epoch stored."""
    return dataclasses.replace(base, scenario=scenario, dataset=dataset, epochs=epochs,
                               checkpoint_epochs=tuple(range(1, epochs + 1)), batch_size=batch_size)


def train_run(st: Study, scenario: str, epochs: int, batch_size: int, dataset: str = "clean"):
    """The fine-tuning run of a scenario on the study's split (trained once, then reused from the run cache)."""
    return training.train(run_config(st.config, scenario, epochs, batch_size, dataset), progress=False)


def discover(st: Study, thresholds=None) -> dict:
    """Admission (knockout attribution + exact prefix search) on the discovery prompts, memoised:
    {"heads", "trace", "attribution" [L, H] share of F(M), "f_model"}."""
    t = thresholds or circuits.Thresholds()

    def compute() -> dict:
        heads, trace, attr, f_m = admission.admit(st.model, st.disc, st.disc_abc, t)
        return {"heads": heads, "trace": trace, "attribution": attr / f_m, "f_model": f_m}

    return results.memo("gt_discovery", compute, st.model, model_name=st.model_name, data=st.disc.fingerprint(),
                        thresholds=t)


def as_circuit(heads: Sequence[tuple[int, int]]) -> circuits.Circuit:
    """The discovered heads as a Circuit for the head maps and knockouts: all in class OTH, kept at every position
    (IOI's classes do not apply to Greater-Than)."""
    return circuit_of(heads)


def checkpoint_row(st: Study, model, tag: str, heads: Sequence[tuple[int, int]], epoch: int, n: int) -> dict:
    """One checkpoint on the first n held-out prompts (memoised): probability difference with its interval,
    accuracy (share > 0), and the faithfulness F(C)/F(M) of a head set with its interval."""
    def compute() -> dict:
        f = checks.faithfulness(model, st.test[:n], st.abc[:n], circuit_of(heads))
        pd = f.per_prompt_model  # every head kept: the model's own score
        return {"epoch": epoch, "tag": tag, "prob_diff": pd.mean().item(), "prob_diff_interval": metrics.bootstrap_ci(pd),
                "accuracy": (pd > 0).float().mean().item(), "faithfulness": f.ratio,
                "faithfulness_interval": f.interval(), "per_prompt": pd}

    return results.memo("gt_checkpoint_row", compute, model, model_name=st.model_name, tag=tag,
                        data=st.test[:n].fingerprint(), heads=sorted(tuple(h) for h in heads))


def run_rows(st: Study, run, start: dict, heads: Sequence[tuple[int, int]], epochs: int, n: int) -> list[dict]:
    """`start` (the base model's row) followed by one checkpoint_row per epoch 1..epochs of a fine-tuning run."""
    return [start] + [checkpoint_row(st, run.model(e)[0], f"{run.id}-{e}", heads, e, n) for e in range(1, epochs + 1)]


def format_row(r: dict) -> str:
    """'epoch 1: probability difference +0.930 [+0.92, ...], base-circuit F(C)/F(M) 91.0% [...]' for one row."""
    (p_lo, p_hi), (f_lo, f_hi) = r["prob_diff_interval"], r["faithfulness_interval"]
    return (f"epoch {r['epoch']}: probability difference {r['prob_diff']:+.3f} [{p_lo:+.3f}, {p_hi:+.3f}], "
            f"base-circuit F(C)/F(M) {r['faithfulness']:.1%} [{f_lo:.1%}, {f_hi:.1%}]")


def head_readouts(st: Study, model, n: int) -> dict:
    """Per-head DLA onto later-minus-earlier years at END and END -> YY attention ([L, H]) on n held-out prompts."""
    ds = st.test[:n]
    return {"dla": attribution.head_dla(model, ds), "attn_yy": attribution.attention_to(model, ds, "END", "YY"),
            "mlp_dla": attribution.mlp_dla(model, ds)}


def mlp_knockout(st: Study, model, n: int) -> Float[torch.Tensor, "n_layers"]:
    """[n_layers] mean probability difference with one layer's MLP mean-ablated to its "01"-twin mean (n prompts)."""
    return results.memo("gt_mlp_knockout", lambda: knockouts.mlp_knockout(model, st.test[:n], st.abc[:n]),
                        model, model_name=st.model_name, data=st.test[:n].fingerprint())


def cmap_effects(st: Study, model_x, model_y, n: int, tags: tuple[str, str]) -> Float[torch.Tensor, "n_layers n_heads"]:
    """[L, H] first-order CMAP (activation_patching.cmap_attribution) of model_x's head outputs into model_y, n
    prompts."""
    return results.memo("gt_cmap_attribution",
                        lambda: activation_patching.cmap_attribution(model_x, model_y, st.test[:n]),
                        model_y, model_name=st.model_name, x=tags[0], y=tags[1], data=st.test[:n].fingerprint())
