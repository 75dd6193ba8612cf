"""Class imbalance: how skewed a training split is, and the two remedies `--balance` offers.

`weights`: inverse-frequency class weights in the cross-entropy (each class carries the same total weight);
`sampler`: an epoch's order drawn so that every class appears equally often (minority images repeat, majority
ones are subsampled without replacement), the same number of steps per epoch as before. The choice between
them and none (`--balance auto`) is `choose_balance`'s, from the ratio of the largest class to the smallest and
from the recipe: bench/imbalance.py found no remedy that wins everywhere. On a pretrained body (the probe, a
fine-tune) weights win: the full-batch probe has no batches for a sampler to fill, and its features are fixed.
Training from scratch the sampler wins: the features themselves are learned, and a minority class seen evenly
often in every batch shapes them, where weights only scale a few rare, noisy gradients.
"""

from __future__ import annotations

import torch

from ..errors import UserError

BALANCES = ("auto", "none", "weights", "sampler")
# auto: weights at or above this largest/smallest ratio. Below it the skew is mild (hymenoptera's own split is
# 1.02); bench/imbalance.py measured the remedies on hymenoptera with bees cut to a tenth (ratio ~10)
AUTO_RATIO = 3.0
# what bench/imbalance.py measured, quoted in the reasons auto records (minority recall, balanced accuracy)
PROBE_EVIDENCE = "hymenoptera with bees cut to a tenth, probe: bee recall 0.70 -> 0.98 with weights"
SCRATCH_EVIDENCE = ("Fashion-MNIST 200/class with Shirt 20, from scratch: balanced accuracy 0.778 with the sampler "
                    "vs 0.754 with weights after 4 epochs, 0.830 vs 0.816 after 8")


def class_counts(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Images per class (int64, length `n_classes`) of single-label targets."""
    return torch.bincount(torch.as_tensor(targets).long().flatten().cpu(), minlength=n_classes)


def imbalance_ratio(counts: torch.Tensor | list[int]) -> float:
    """Largest class count / smallest (inf when a class has no images; 1.0 balanced)."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    if len(c) == 0:
        return 1.0
    return float("inf") if c.min() == 0 else float(c.max() / c.min())


def class_weights(counts: torch.Tensor | list[int]) -> torch.Tensor:
    """Inverse-frequency weights n / (K * n_c): a balanced split gives all ones, and each class's images carry
    the same total weight. A class with no images gets 0 (nothing to weigh)."""
    c = torch.as_tensor(counts, dtype=torch.float32)
    k, n = len(c), float(c.sum())
    return torch.where(c > 0, n / (k * c.clamp_min(1)), torch.zeros_like(c))


def choose_balance(asked: str, counts: torch.Tensor | list[int], task: str = "classify", recipe: str | None = None,
                   streaming: bool = False) -> tuple[str, str]:
    """(method, why) for `--balance`: what was asked, or for auto a rule on the ratio and the recipe. From a
    ratio of AUTO_RATIO (largest class / smallest): `recipe` "scratch" (random weights, every layer learns) takes
    the sampler, any other (the probe or a fine-tune of a pretrained body; None: not known) class weights.
    `streaming` (shards read in order, no row to draw by index): weights whatever the recipe."""
    if asked not in BALANCES:
        raise UserError(f"--balance {asked}: choose {', '.join(BALANCES)}")
    if task != "classify":
        if asked in ("weights", "sampler"):
            raise UserError(f"--balance {asked}: for single-label classes only (this is --task {task})")
        return "none", f"--task {task}: class balancing applies to single-label classes"
    ratio = imbalance_ratio(counts)
    if asked != "auto":
        return asked, f"--balance {asked} asked for (imbalance ratio {ratio:.2f})"
    if ratio < AUTO_RATIO:
        return "none", f"imbalance ratio {ratio:.2f} < {AUTO_RATIO:g}: classes close enough to even, no reweighting"
    skew = f"imbalance ratio {ratio:.2f} >= {AUTO_RATIO:g}"
    if recipe == "scratch" and not streaming:
        return "sampler", (f"{skew}, trained from scratch: a sampler drawing classes evenly, so the features "
                           f"learn the small classes ({SCRATCH_EVIDENCE}; bench/imbalance.py)")
    if recipe == "scratch":
        return "weights", (f"{skew}, trained from scratch on streamed shards: class-weighted loss (the sampler, "
                           "better from scratch, draws rows by index, which shards do not have)")
    return "weights", (f"{skew}, {'a pretrained body' if recipe else 'recipe not known'}: class-weighted loss (it "
                       "also reaches the full-batch probe, where a sampler has no batches to act on; "
                       f"{PROBE_EVIDENCE}; bench/imbalance.py)")


class BalancedSampler:
    """An epoch's order of training rows with every class drawn equally often (`BatchLoader.sampler`).

    `n` rows per epoch (default: as many as the split has), split evenly over the classes present (the
    remainder to classes drawn at random); within a class rows come from concatenated seeded
    permutations, so each image appears floor or ceil of its share: no image is drawn twice before every
    image of its class has been drawn once."""

    def __init__(self, targets: torch.Tensor, n: int | None = None):
        t = torch.as_tensor(targets).long().flatten().cpu()
        self.rows = [torch.nonzero(t == c).flatten() for c in torch.unique(t).tolist()]
        self.n = len(t) if n is None else int(n)

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        k = len(self.rows)
        if k == 0 or self.n == 0:
            return torch.zeros(0, dtype=torch.long)
        base, extra = divmod(self.n, k)
        lucky = set(torch.randperm(k, generator=generator)[:extra].tolist())
        picks = []
        for j, rows in enumerate(self.rows):
            m = base + (1 if j in lucky else 0)
            reps = -(-m // len(rows))
            order = torch.cat([rows[torch.randperm(len(rows), generator=generator)] for _ in range(reps)])
            picks.append(order[:m])
        out = torch.cat(picks)
        return out[torch.randperm(len(out), generator=generator)]


def balance_plan(data, asked: str = "auto", recipe: str | None = None) -> dict:
    """What `--balance` does for `data` (an `ImageData`) under `recipe` (the one `train` runs: "scratch", or the
    probe / fine-tune of a pretrained body): method, why, the training split's class counts and imbalance ratio
    (None for tags and numbers); printed by `train` and kept in config.json's resolved section."""
    if data.task != "classify":
        method, why = choose_balance(asked, [], data.task)
        return {"method": method, "why": why, "ratio": None}
    counts = class_counts(data.train_y, len(data.classes))
    method, why = choose_balance(asked, counts, data.task, recipe, bool(getattr(data, "streaming", False)))
    return {"method": method, "why": why, "ratio": imbalance_ratio(counts), "recipe": recipe,
            "largest": data.classes[int(counts.argmax())], "smallest": data.classes[int(counts.argmin())]}
