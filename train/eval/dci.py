"""DCI (disentanglement, completeness, informativeness) of slot representations on MultiGrid.

Paper appendix C.2 ("Independent Entities"), after Eastwood and Williams (2018), adapted to
permutation-equivariant slots: slot k may hold a different agent in every frame, so one linear probe is
shared by all slots and agents, and each frame is scored under its own optimal slot <-> agent matching.

Axes: F frames, K slots per frame, M agents per frame, D slot width, G possible agent cells.

Procedure (the paper's equations were lost in extraction; this is the reconstruction we implement):

* label ``y[f, j]`` = cell index of agent j in frame f, ``y * width + x``;
* probe ``h: R^D -> R^G``, ``p(y | s) = softmax(h(s))``; cost ``c[f, k, j] = -log p(y[f, j] | s[f, k])``;
* matching ``sigma_f = argmin_sigma sum_j c[f, sigma(j), j]`` over one-to-one maps agents -> slots
  (K >= M); the probe is trained with cross-entropy on matched pairs, re-matching before every step;
* on validation frames, ``L[k, j] = p(y_j | s_k)`` and
  ``D_k = 1 - H_j(L[k, :] / sum_j L[k, :]) / log M``, ``C_j = 1 - H_k(L[:, j] / sum_k L[:, j]) / log K``,
  ``I = mean_j [argmax_g h(s[sigma(j)]) == y_j]``; D, C and I are plain means over slots / agents and frames.

Judgement calls:

* slots are standardised with train statistics before the probe (an affine map shared by all slots, so
  the probe stays linear); the probe starts at zero, so training is deterministic without an RNG;
* the probe's L2 penalty is chosen by held-out likelihood (``weight_decay="cv"``, the default): D and C
  read how concentrated the likelihoods are, so they are only meaningful for a calibrated probe. A fixed
  penalty is confidently wrong on uninformative slots, which inflates D and C of the "Random" reference
  with the slot width: random 256-d slots at the default evaluation size (512 probe-training frames)
  scored D = C = 0.78 under scikit-learn's ``C=1`` penalty, above many trained models. The grid
  ``CV_WEIGHT_DECAYS`` is fitted on the first 80% of the probe-training frames and scored by matched NLL
  on the last 20%; the winner is refitted on all of them. Random slots then pick the strongest penalty
  (flat likelihoods, D and C near 0) and informative slots a weak one (tests/train/eval/test_dci.py
  bounds both);
* M == 1 gives D = 1 and K == 1 gives C = 1 (a distribution over a single outcome is trivially
  concentrated, and ``log 1 = 0`` leaves the normalised entropy undefined);
* the default split is contiguous (the first ``train_fraction`` of the frames train the probe), so frames
  of one episode do not leak across it when frames come in episode order;
* D is the plain mean over slots as the paper states, so with K > M empty slots (flat likelihoods over
  agents, D_k ~ 0) pull it towards M / K; ``disentanglement_weighted`` adds Eastwood and Williams'
  importance weighting, which discounts them;
* re-matching before every step is hard EM and can settle in a local optimum; from the zero start all
  costs tie and the first matching is the identity, from which the synthetic checks in
  ``tests/train/eval/test_dci.py`` still reach the correct matching.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

# Exhaustive matching scores all P = K! / (K - M)! assignments of every frame with one GEMM (K = M = 4:
# P = 24; K = 6, M = 4: P = 360); above P_max it falls back to scipy's Hungarian solver, one call per frame.
# Measured on one CPU thread, 1000 frames: K = M = 4 0.2 ms vs 4 ms (scipy); K = 5, M = 4 1.1 vs 2.1 ms;
# K = 6, M = 4 3.9 vs 3.3 ms; K = 8, M = 4 13.5 vs 2.8 ms. So on CPU enumerate up to P = 120; on an
# accelerator the GEMM stays cheap far longer and the scipy path would need a host copy and a Python loop.
MAX_ENUMERATED_CPU = 120
MAX_ENUMERATED_ACCELERATOR = 5040
# L2 penalties tried when the probe's is chosen by held-out likelihood (``weight_decay="cv"``).
CV_WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)
CV_HOLDOUT = 0.2  # share of the probe-training frames (the last ones) that scores each penalty
# Elements per chunk when scoring or matching, so that [chunk, K, G] logits and [chunk, P] totals stay small.
_CHUNK_ELEMENTS = 1 << 24


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_int(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")


def infer_grid(positions: ArrayLike) -> tuple[int, int]:
    """(width, height) just large enough for ``positions`` [..., 2] int (x, y): max + 1 on each axis."""
    pos = _as_tensor(positions, "positions")
    _check_int(pos, "positions")
    if pos.ndim < 1 or pos.shape[-1] != 2 or pos.numel() == 0:
        raise ValueError(f"positions must be [..., 2] (x, y) and non-empty, got shape {tuple(pos.shape)}")
    if int(pos.min()) < 0:
        raise ValueError("positions must be non-negative grid cells")
    return int(pos[..., 0].max()) + 1, int(pos[..., 1].max()) + 1


def positions_to_labels(positions: ArrayLike, grid: tuple[int, int]) -> torch.Tensor:
    """Agent cells [F, M, 2] int (x, y) -> labels [F, M] int64 ``y * width + x`` in [0, width * height).

    ``grid`` is (width, height); a position outside it is a ValueError.
    """
    pos = _as_tensor(positions, "positions")
    _check_int(pos, "positions")
    if pos.ndim != 3 or pos.shape[-1] != 2:
        raise ValueError(f"positions must be [F, M, 2] (x, y), got shape {tuple(pos.shape)}")
    width, height = (int(v) for v in grid)
    if width < 1 or height < 1:
        raise ValueError(f"grid must be (width, height) with both >= 1, got {grid}")
    pos = pos.long()
    if pos.numel() and int(pos.min()) < 0:
        raise ValueError("positions must be non-negative grid cells")
    if pos.numel() and (int(pos[..., 0].max()) >= width or int(pos[..., 1].max()) >= height):
        raise ValueError(f"positions fall outside the grid (width, height) = {(width, height)}")
    return pos[..., 1] * width + pos[..., 0]


def random_slots_like(slots: ArrayLike, seed: int = 0) -> ArrayLike:
    """Standard-normal slots with the shape (and array type, dtype, device) of ``slots`` [F, K, D]: the
    paper's "Random" reference row, scored with the same ``dci`` call."""
    ref = _as_tensor(slots, "slots")
    g = torch.Generator().manual_seed(seed)
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    out = torch.randn(tuple(ref.shape), generator=g, dtype=torch.float32).to(dtype)
    if isinstance(slots, np.ndarray):
        return out.numpy()
    return out.to(ref.device)


def _assignments(num_slots: int, num_agents: int, device: torch.device) -> torch.Tensor:
    """All one-to-one maps agents -> slots as [P, M] slot indices, lexicographic (ties keep the first)."""
    perms = list(itertools.permutations(range(num_slots), num_agents))
    return torch.tensor(perms, dtype=torch.long, device=device).reshape(len(perms), num_agents)


def match_slots(cost: torch.Tensor, max_enumerated: int | None = None) -> torch.Tensor:
    """Per-frame optimal one-to-one matching of agents to slots.

    cost [F, K, M] (cost of slot k for agent j), K >= M -> sigma [F, M] int64, the slot matched to each
    agent, minimising ``sum_j cost[f, sigma[f, j], j]``.

    Both paths are exact (ties aside). When P = K! / (K - M)! <= ``max_enumerated`` (None: 120 on CPU,
    5040 on an accelerator; see the timings at ``MAX_ENUMERATED_CPU``) all assignments are scored with one
    matrix product on the tensors' device, ties going to the lexicographically first; above that each
    frame goes through scipy's Hungarian solver (``linear_sum_assignment``) on the host.
    """
    if cost.ndim != 3:
        raise ValueError(f"cost must be [F, K, M], got shape {tuple(cost.shape)}")
    n_frames, num_slots, num_agents = cost.shape
    if num_slots < num_agents:
        raise ValueError(f"need at least as many slots as agents, got K={num_slots} < M={num_agents}")
    # Clamp: 0 * inf would be NaN in the matmul below (log_softmax of finite logits is finite anyway).
    cost = cost.detach().clamp(-1e30, 1e30)
    num_assign = math.perm(num_slots, num_agents)
    if max_enumerated is None:
        cpu = cost.device.type == "cpu"
        max_enumerated = MAX_ENUMERATED_CPU if cpu else MAX_ENUMERATED_ACCELERATOR
    if num_assign <= max_enumerated:
        perms = _assignments(num_slots, num_agents, cost.device)  # [P, M]
        # Indicator [K * M, P] of the (slot, agent) pairs each assignment uses: one GEMM scores them all.
        pair = perms * num_agents + torch.arange(num_agents, device=cost.device)  # [P, M] flat (k, j)
        pick = torch.zeros(num_slots * num_agents, num_assign, dtype=cost.dtype, device=cost.device)
        pick[pair, torch.arange(num_assign, device=cost.device)[:, None]] = 1.0
        chunk = max(1, _CHUNK_ELEMENTS // num_assign)
        out = []
        for lo in range(0, n_frames, chunk):
            total = cost[lo : lo + chunk].flatten(1) @ pick  # [f, P]
            out.append(perms[total.argmin(-1)])  # [f, M]
        return torch.cat(out) if out else torch.empty(0, num_agents, dtype=torch.long, device=cost.device)
    from scipy.optimize import linear_sum_assignment

    c = cost.transpose(1, 2).double().cpu().numpy()  # [F, M, K]: rows are agents, in order
    sigma = np.empty((n_frames, num_agents), dtype=np.int64)
    for f in range(n_frames):
        _, cols = linear_sum_assignment(c[f])
        sigma[f] = cols
    return torch.from_numpy(sigma).to(cost.device)


def _slot_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [F, K, G], labels [F, M] -> log p(y_j | s_k) [F, K, M]."""
    logp = logits.log_softmax(-1)
    idx = labels[:, None, :].expand(-1, logits.shape[1], -1)  # [F, K, M]
    return logp.gather(-1, idx)


class _Probe(torch.nn.Module):
    """Standardisation with train statistics, then P independent linear maps R^D -> R^G (one per L2
    penalty being compared), each shared by all slots. forward: slots [..., D] -> logits [P, ..., G]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int, copies: int = 1) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        # Zero init: deterministic without an RNG, and softmax regression is convex for a fixed matching.
        self.weight = torch.nn.Parameter(torch.zeros(copies, mean.shape[0], num_classes))
        self.bias = torch.nn.Parameter(torch.zeros(copies, num_classes))

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        x = ((slots - self.mean) / self.std).flatten(0, -2)  # [R, D]
        logits = torch.einsum("rd,pdg->prg", x, self.weight) + self.bias[:, None]  # [P, R, G]
        return logits.reshape(len(self.weight), *slots.shape[:-1], -1)


class _Single(torch.nn.Module):
    """One probe of a ``_Probe``: slots [..., D] -> logits [..., G]."""

    def __init__(self, probes: _Probe, index: int) -> None:
        super().__init__()
        self.probes, self.index = probes, index

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        return self.probes(slots)[self.index]


def fit_probe(
    slots: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    iters: int = 300,
    lr: float = 0.05,
    weight_decay: float | None = None,
    batch_frames: int | None = 4096,
    seed: int = 0,
    max_enumerated: int | None = None,
) -> torch.nn.Module:
    """Train the shared linear probe with alternating matching and Adam steps.

    slots [F, K, D] float, labels [F, M] int64 in [0, num_classes). Each step draws ``batch_frames`` frames
    (all of them when None or when F is smaller, i.e. full-batch), matches agents to slots under the current
    probe (``match_slots`` on the detached NLL) and takes one Adam step on the mean matched cross-entropy.
    Unmatched slots (K > M) get no gradient. Deterministic for a seed (the seed only drives batch sampling).

    ``weight_decay`` is an L2 penalty ``weight_decay / 2 * |W|^2`` added to the mean cross-entropy (Adam's
    coupled decay; the bias is not decayed). None means ``1 / (F * M)``, one over the number of matched
    training pairs: the same objective as scikit-learn's ``LogisticRegression(C=1)`` default (``dci`` picks
    the penalty by held-out likelihood instead, see the module docstring).
    Returns the probe: a module mapping slots [..., D] -> logits [..., G].
    """
    if weight_decay is None:
        weight_decay = 1.0 / (labels.shape[0] * labels.shape[1])
    probes = _fit_probes(
        slots, labels, num_classes, (weight_decay,), iters, lr, batch_frames, seed, max_enumerated
    )
    return _Single(probes, 0).eval()


def _fit_probes(
    slots, labels, num_classes, weight_decays, iters, lr, batch_frames, seed, max_enumerated
) -> _Probe:
    """One probe per penalty in ``weight_decays``, trained together (independent problems, one loop)."""
    flat = slots.reshape(-1, slots.shape[-1]).float()
    mean = flat.mean(0)
    std = flat.std(0, unbiased=False).clamp_min(1e-6)
    probes = _Probe(mean, std, num_classes, len(weight_decays)).to(slots.device)
    decay = torch.tensor(weight_decays, dtype=torch.float32, device=slots.device)  # [P]
    opt = torch.optim.Adam([probes.weight, probes.bias], lr=lr)
    g = torch.Generator().manual_seed(seed)
    slots, n_frames, copies = slots.detach(), slots.shape[0], len(weight_decays)
    with torch.enable_grad():  # callers often evaluate under no_grad; the probe itself must learn
        for _ in range(iters):
            if batch_frames is None or batch_frames >= n_frames:
                s, y = slots, labels
            else:
                idx = torch.randperm(n_frames, generator=g)[:batch_frames].to(slots.device)
                s, y = slots[idx], labels[idx]
            logits = probes(s.float())  # [P, B, K, G]
            log_lik = _slot_log_likelihood(logits.flatten(0, 1), y.repeat(copies, 1))  # [P*B, K, M]
            sigma = match_slots(-log_lik, max_enumerated)  # [P*B, M]
            nll = -log_lik.gather(1, sigma[:, None, :]).reshape(copies, -1).mean(1)  # [P]
            # Adam's coupled L2, as torch.optim.Adam(weight_decay=...) adds it to the gradient.
            penalty = 0.5 * decay * probes.weight.square().sum(dim=(1, 2))
            opt.zero_grad(set_to_none=True)
            (nll + penalty).sum().backward()
            opt.step()
    return probes.eval()


def _normalised_entropy(log_p: torch.Tensor, dim: int) -> torch.Tensor:
    """1 - H(p) / log n along ``dim`` (n = its size) from log-probabilities; 1 when n == 1."""
    n = log_p.shape[dim]
    if n == 1:
        return torch.ones_like(log_p.select(dim, 0))
    ent = -(log_p.exp() * log_p).sum(dim)
    return 1.0 - ent / math.log(n)


@torch.no_grad()
def dci_scores(
    probe: torch.nn.Module,
    slots: torch.Tensor,
    labels: torch.Tensor,
    max_enumerated: int | None = None,
) -> dict[str, float]:
    """D, C, I of a trained probe on (validation) slots [F, K, D] and labels [F, M]; python floats.

    Also returns ``disentanglement_weighted``: Eastwood and Williams' importance-weighted D, each slot's D_k
    weighted by its share of the frame's likelihood mass ``sum_j L[k, j] / sum_kj L``. With K > M the plain
    mean counts empty slots (whose likelihoods are flat across agents, so D_k ~ 0); the weighted one does not.
    """
    n_frames, num_slots, _ = slots.shape
    num_classes = int(probe(slots[:1, :1].float()).shape[-1])
    chunk = max(1, _CHUNK_ELEMENTS // (num_slots * num_classes))
    sums = torch.zeros(4, dtype=torch.float64)
    for lo in range(0, n_frames, chunk):
        s, y = slots[lo : lo + chunk].float(), labels[lo : lo + chunk]
        logits = probe(s)  # [f, K, G]
        log_lik = _slot_log_likelihood(logits, y)  # [f, K, M]: log L[k, j]
        # Normalise in log space: an unrelated slot can give likelihoods that underflow for every agent.
        log_pd = log_lik - log_lik.logsumexp(2, keepdim=True)  # over agents j
        log_pc = log_lik - log_lik.logsumexp(1, keepdim=True)  # over slots k
        d_k = _normalised_entropy(log_pd, 2)  # [f, K]
        c_j = _normalised_entropy(log_pc, 1)  # [f, M]
        weight = (log_lik.logsumexp(2) - log_lik.flatten(1).logsumexp(1, keepdim=True)).exp()  # [f, K]
        sigma = match_slots(-log_lik, max_enumerated)  # [f, M]
        pred = logits.argmax(-1).gather(1, sigma)  # [f, M]: the matched slot's predicted cell
        sums += torch.stack(
            [
                d_k.double().sum(),
                c_j.double().sum(),
                (pred == y).double().sum(),
                (weight * d_k).double().sum(),
            ]
        ).cpu()
    num_agents = labels.shape[1]
    return {
        "disentanglement": float(sums[0]) / (n_frames * num_slots),
        "completeness": float(sums[1]) / (n_frames * num_agents),
        "informativeness": float(sums[2]) / (n_frames * num_agents),
        "disentanglement_weighted": float(sums[3]) / n_frames,
    }


def _prepare(slots: ArrayLike, targets: ArrayLike, name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate one (slots, targets) pair; returns tensors and whether targets are (x, y) positions."""
    s = _as_tensor(slots, f"{name}slots")
    t = _as_tensor(targets, f"{name}positions")
    if s.ndim != 3 or not s.is_floating_point():
        raise ValueError(f"{name}slots must be float [F, K, D], got shape {tuple(s.shape)} dtype {s.dtype}")
    _check_int(t, f"{name}positions")
    is_positions = t.ndim == 3
    if not (t.ndim == 2 or (is_positions and t.shape[-1] == 2)):
        raise ValueError(f"{name}positions must be [F, M, 2] (x, y) or labels [F, M], got {tuple(t.shape)}")
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{name}slots have {s.shape[0]} frames but {name}positions have {t.shape[0]}")
    if s.shape[0] == 0 or t.shape[1] == 0 or s.shape[2] == 0:
        raise ValueError(f"need at least one frame, agent and slot dimension, got {tuple(s.shape)}")
    if s.shape[1] < t.shape[1]:
        raise ValueError(f"need at least as many slots as agents, got K={s.shape[1]} < M={t.shape[1]}")
    if int(t.min()) < 0:
        raise ValueError(f"{name}positions must be non-negative")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name}slots contain NaN or inf")
    return s, t.long().to(s.device), is_positions


def dci(
    slots: ArrayLike,
    positions: ArrayLike,
    *,
    grid: tuple[int, int] | None = None,
    num_classes: int | None = None,
    train_fraction: float = 0.5,
    val_slots: ArrayLike | None = None,
    val_positions: ArrayLike | None = None,
    seed: int = 0,
    iters: int = 300,
    lr: float = 0.05,
    weight_decay: float | str | None = "cv",
    batch_frames: int | None = 4096,
    max_enumerated: int | None = None,
) -> dict[str, float]:
    """DCI of slots against agent positions; returns python numbers.

    slots [F, K, D] float; positions [F, M, 2] int (x, y) cells, or labels [F, M] int in [0, G).
    Positions become labels ``y * width + x`` with ``grid = (width, height)``, by default the smallest grid
    holding every position (train and validation). Labels use G = ``num_classes`` (default max label + 1).

    Split: without ``val_slots``, the first ``floor(train_fraction * F)`` frames train the probe and the rest
    are scored; the split is contiguous, not shuffled, so frames ordered by episode do not leak
    near-duplicates into validation. With ``val_slots``/``val_positions`` all of ``slots`` trains the probe
    and ``train_fraction`` is ignored. Scores are always on validation frames only.

    ``weight_decay``: the probe's L2 penalty; "cv" (default) picks it from ``CV_WEIGHT_DECAYS`` by held-out
    likelihood on the training frames (see the module docstring), None is ``fit_probe``'s default.

    Returns ``disentanglement``, ``completeness``, ``informativeness`` (see the module docstring),
    ``disentanglement_weighted`` (see ``dci_scores``), ``num_train_frames``, ``num_val_frames`` and
    ``probe_weight_decay`` (the penalty used).
    """
    s_tr, t_tr, is_pos = _prepare(slots, positions, "")
    if (val_slots is None) != (val_positions is None):
        raise ValueError("pass both val_slots and val_positions, or neither")
    if val_slots is None:
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        n_train = math.floor(train_fraction * s_tr.shape[0])
        if n_train < 1 or n_train >= s_tr.shape[0]:
            raise ValueError(f"{s_tr.shape[0]} frames give an empty split at train_fraction={train_fraction}")
        s_tr, s_va, t_tr, t_va = s_tr[:n_train], s_tr[n_train:], t_tr[:n_train], t_tr[n_train:]
    else:
        s_va, t_va, va_is_pos = _prepare(val_slots, val_positions, "val_")
        if va_is_pos != is_pos:
            raise ValueError("positions and val_positions must both be [F, M, 2] or both be labels [F, M]")
        if s_va.shape[1:] != s_tr.shape[1:] or t_va.shape[1:] != t_tr.shape[1:]:
            raise ValueError(
                f"val shapes {tuple(s_va.shape)}, {tuple(t_va.shape)} do not match train "
                f"{tuple(s_tr.shape)}, {tuple(t_tr.shape)} beyond the frame axis"
            )
        s_va, t_va = s_va.to(s_tr.device), t_va.to(s_tr.device)

    if is_pos:
        if num_classes is not None:
            raise ValueError("num_classes is for labels [F, M]; pass grid=(width, height) with positions")
        if grid is None:
            grid = infer_grid(torch.cat([t_tr, t_va]))
        y_tr, y_va = positions_to_labels(t_tr, grid), positions_to_labels(t_va, grid)
        n_cls = int(grid[0]) * int(grid[1])
    else:
        if grid is not None:
            raise ValueError("grid is for positions [F, M, 2]; pass num_classes with labels [F, M]")
        y_tr, y_va = t_tr, t_va
        top = int(torch.cat([y_tr, y_va]).max()) + 1
        n_cls = top if num_classes is None else int(num_classes)
        if top > n_cls:
            raise ValueError(f"labels reach {top - 1} but num_classes={n_cls}")

    fit = dict(iters=iters, lr=lr, batch_frames=batch_frames, seed=seed, max_enumerated=max_enumerated)
    if weight_decay == "cv":
        weight_decay = select_weight_decay(s_tr, y_tr, n_cls, **fit)
    elif isinstance(weight_decay, str):
        raise ValueError(f"weight_decay must be a number, None or 'cv', got {weight_decay!r}")
    probe = fit_probe(s_tr, y_tr, n_cls, weight_decay=weight_decay, **fit)
    out: dict[str, float] = dict(dci_scores(probe, s_va, y_va, max_enumerated))
    out["num_train_frames"] = int(s_tr.shape[0])
    out["num_val_frames"] = int(s_va.shape[0])
    out["probe_weight_decay"] = weight_decay
    return out


def select_weight_decay(
    slots: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    iters: int,
    lr: float,
    batch_frames: int | None,
    seed: int,
    max_enumerated: int | None,
) -> float | None:
    """The penalty of ``CV_WEIGHT_DECAYS`` whose probe, fitted on the first 80% of the frames, gives the
    lowest matched NLL on the last 20% (all penalties trained in one loop). slots [F, K, D], labels [F, M].
    Too few frames to hold any out: None (``fit_probe``'s default)."""
    n_fit = math.floor((1.0 - CV_HOLDOUT) * slots.shape[0])
    if n_fit < 1 or n_fit >= slots.shape[0]:
        return None
    probes = _fit_probes(
        slots[:n_fit],
        labels[:n_fit],
        num_classes,
        CV_WEIGHT_DECAYS,
        iters,
        lr,
        batch_frames,
        seed,
        max_enumerated,
    )
    with torch.no_grad():
        held, y = slots[n_fit:].float(), labels[n_fit:]
        log_lik = _slot_log_likelihood(probes(held).flatten(0, 1), y.repeat(len(CV_WEIGHT_DECAYS), 1))
        sigma = match_slots(-log_lik, max_enumerated)
        nll = -log_lik.gather(1, sigma[:, None, :]).reshape(len(CV_WEIGHT_DECAYS), -1).mean(1)  # [P]
    return CV_WEIGHT_DECAYS[int(nll.argmin())]
