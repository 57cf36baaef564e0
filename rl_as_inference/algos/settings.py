"""Settings every training algorithm shares, and the allowed values of every config key, declared once.

Each algorithm's config dataclass subclasses :class:`RunSettings` and adds its own hyperparameters;
it redeclares a shared field only to change its default (the field keeps its place), so the
meaning of ``seed`` or ``exploring_starts`` is written in one place for all of them.

:data:`RULES` says, for every field name any config uses, which values are allowed; constructing a
config checks every field against it (:func:`check_settings`) and refuses a bad value with one
line naming the key, the value and what is allowed, before anything is built or written. A field
without a rule is an error at construction, so a new hyperparameter cannot skip its check.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rl_as_inference import distributed as dp
from rl_as_inference.critics import N_STEP_CORRECTIONS
from rl_as_inference.envs.ids import check_env_id
from rl_as_inference.guides.normalization import DEFAULT_OBS_CLIP
from rl_as_inference.guides.policies import ACTIVATIONS, activation_class
from rl_as_inference.temperature import SCHEDULES

__all__ = [
    "BACKENDS",
    "VECTORIZATIONS",
    "LOSSES",
    "OBJECTIVES",
    "RULES",
    "START_STATES",
    "Rule",
    "RunSettings",
    "check_settings",
]

VECTORIZATIONS = ("sync", "async")  # gymnasium.make_vec's vectorization_mode for Gymnasium's own envs
BACKENDS = ("auto", "functional", "gymnasium")  # the torch port where there is one, or Gymnasium's own env
OBJECTIVES = ("maxent", "kl")  # the source's eq. (10) against the uniform prior, or eq. (2) against pi_k
START_STATES = ("replay", "rollout")  # where segment SVI starts its segments
LOSSES = ("mse", "huber")  # soft Q-learning's regression loss

SEED_MAX = 2**32 - 1  # numpy's global seed (which pyro.set_rng_seed sets) must lie in [0, 2**32)


@dataclass(frozen=True)
class Rule:
    """An allowed set of values: ``ok(value)`` decides, ``allowed`` says it in words, and
    ``explain(value)``, where given, raises a more specific error for a refused value."""

    ok: Callable[[Any], bool]
    allowed: str
    explain: Callable[[Any], None] | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def count(minimum: int) -> Rule:
    """An int >= ``minimum``."""
    return Rule(lambda v: _is_int(v) and v >= minimum, f"an int >= {minimum}")


def interval(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Rule:
    """A finite number in the interval from ``low`` to ``high`` (ends closed unless said open)."""

    def ok(v: Any) -> bool:
        if not _is_number(v) or not math.isfinite(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    text = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return Rule(ok, f"a number in {text}")


POSITIVE = Rule(lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a positive finite number")
FINITE = Rule(lambda v: _is_number(v) and math.isfinite(v), "a finite number")
FLAG = Rule(lambda v: isinstance(v, bool), "true or false")


def optional(rule: Rule) -> Rule:
    """None (unset) or a value of ``rule``."""
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed}, or none")


def one_of(choices: Sequence[str]) -> Rule:
    """One of the strings ``choices``."""
    return Rule(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(map(repr, choices))}")


def _is_device(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    if v == "auto":
        return True
    try:
        device = torch.device(v)
    except (RuntimeError, TypeError):
        return False
    if device.type == "cuda":  # a CUDA run on a machine without CUDA fails later, deep in torch
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "cpu"


def _is_env_id(v: Any) -> bool:
    try:
        check_env_id(v)
    except ValueError:
        return False
    return True


_DEVICE = Rule(
    _is_device,
    "'cpu', 'auto', or 'cuda'/'cuda:N' where CUDA is available"
    if torch.cuda.is_available()
    else "'cpu' or 'auto' (CUDA is not available here)",
)
_HIDDEN = Rule(
    lambda v: isinstance(v, tuple | list) and len(v) > 0 and all(_is_int(h) and h >= 1 for h in v),
    "a non-empty list of layer widths >= 1, such as [256, 256]",
)
_ENV = Rule(_is_env_id, "a registered Gymnasium id without a 'module:' prefix", explain=check_env_id)
_CONTINUATION = interval(0, 1, open_low=True)
PROBABILITY_OF_CONTINUING = Rule(
    _CONTINUATION.ok, f"{_CONTINUATION.allowed}, the per-step continuation probability"
)


def _is_plain(v: Any) -> bool:
    """A value a TOML file can hold and a JSON record can keep: a number, string, bool, a list
    of such, or a table of such under string keys."""
    if isinstance(v, bool | int | float | str):
        return True
    if isinstance(v, list | tuple):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    return False


ENV_KWARGS = Rule(
    lambda v: isinstance(v, dict) and all(k.isidentifier() for k in v) and _is_plain(v),
    "a table of keyword arguments of the env's constructor, e.g. {is_slippery = false} "
    "(--set env_kwargs.is_slippery=false)",
)


# Every config key of every algorithm. Keys are shared across algorithms by meaning.
RULES: dict[str, Rule] = {
    # RunSettings
    "env": _ENV,
    "total_env_steps": count(1),
    "num_envs": count(1),
    "exploring_starts": interval(0, 1),
    "rescale_obs": FLAG,
    "normalize_obs": FLAG,
    "obs_clip": POSITIVE,
    "rescale_actions": FLAG,
    "seed": Rule(lambda v: _is_int(v) and 0 <= v <= SEED_MAX, f"an int in [0, {SEED_MAX}]"),
    "device": _DEVICE,
    "log_every": count(1),
    # sizes and counts
    "learning_starts": count(0),
    "batch_size": count(1),
    "actor_batch_size": count(1),
    "buffer_size": count(1),
    "num_samples": count(1),
    "horizon": count(1),
    "unroll_length": count(1),
    "updates_per_step": count(1),
    "updates_per_batch": count(1),
    "updates_every": count(1),
    "critic_updates": count(1),
    "target_update_every": count(1),
    "target_policy_update_every": count(1),
    "prior_update_every": count(1),
    "n_step": count(1),
    "hidden": _HIDDEN,
    "activation": Rule(one_of(tuple(ACTIVATIONS)).ok, "a torch.nn activation name", explain=activation_class),
    # discounting, averaging and traces
    "gamma": PROBABILITY_OF_CONTINUING,
    "tau": interval(0, 1, open_low=True),
    "trace_lambda": interval(0, 1),
    "td_lambda": interval(0, 1),
    "top_fraction": interval(0, 1, open_low=True),
    # step sizes
    "actor_lr": POSITIVE,
    "critic_lr": POSITIVE,
    "alpha_lr": POSITIVE,
    "policy_lr": POSITIVE,
    "value_lr": POSITIVE,
    "dual_lr": POSITIVE,
    "lr": POSITIVE,
    "max_grad_norm": optional(POSITIVE),
    "anneal_lr": FLAG,
    # temperatures, bounds and duals
    "alpha": optional(POSITIVE),
    "initial_alpha": POSITIVE,
    "alpha_final": optional(POSITIVE),
    "alpha_schedule": one_of(SCHEDULES),
    "alpha_anneal_steps": optional(count(1)),
    "target_entropy": optional(FINITE),
    "kl_bound": POSITIVE,
    "epsilon": POSITIVE,
    "epsilon_mean": POSITIVE,
    "epsilon_stddev": POSITIVE,
    "epsilon_policy": POSITIVE,
    "epsilon_penalty": POSITIVE,
    "epsilon_eta": POSITIVE,
    "epsilon_alpha": POSITIVE,
    "init_temperature": POSITIVE,
    "init_alpha": POSITIVE,
    "init_log_temperature": FINITE,
    "init_log_alpha": FINITE,
    "reward_scale": POSITIVE,
    # choices
    "n_step_correction": one_of(N_STEP_CORRECTIONS),
    "env_kwargs": ENV_KWARGS,
    "backend": one_of(BACKENDS),
    "vectorization": one_of(VECTORIZATIONS),
    "objective": one_of(OBJECTIVES),
    "start_states": one_of(START_STATES),
    "loss": one_of(LOSSES),
    "double_q": FLAG,
    "twin_critic": FLAG,
    "per_dim_constraints": FLAG,
    "action_penalization": FLAG,
    "distributional_critic": FLAG,
    "num_atoms": count(2),
    # the support's ends; v_min < v_max is checked where the critic is built (two keys at once)
    "v_min": FINITE,
    "v_max": FINITE,
}


def check_settings(config: Any) -> None:
    """Check every field of a config dataclass against :data:`RULES`.

    Raises:
        ValueError: one line, ``key=value is not allowed; use ...``, for the first bad field (or a
            field that has no rule).
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        rule = RULES.get(f.name)
        if rule is None:
            raise ValueError(
                f"{type(config).__name__}.{f.name} has no rule in rl_as_inference.algos.settings.RULES"
            )
        if not rule.ok(value):
            if rule.explain is not None:
                rule.explain(value)  # raises the more specific message
            raise ValueError(f"{f.name}={value!r} is not allowed; use {rule.allowed}")


@dataclass
class RunSettings:
    """What to train on, for how long, from which starts, with which inputs, where, and how often to log."""

    env: str = "Pendulum-v1"  # a Gymnasium id, or one added with envs.register
    # keyword arguments of the env's constructor: gymnasium.make(env, **env_kwargs), or the torch
    # env's factory (a port takes only the arguments it models, such as Pendulum-v1's g)
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    total_env_steps: int = 20_000  # the training budget, in environment steps
    num_envs: int = 1  # parallel envs collecting data
    backend: str = "auto"  # the torch port where there is one, else "gymnasium" (Gymnasium's own env)
    vectorization: str = "sync"  # Gymnasium's envs in this process, or "async" (one subprocess each)
    exploring_starts: float = 0.0  # share of training resets drawn anywhere in the state box (0: p(s_0))
    rescale_obs: bool = False  # map bounded observation coordinates onto [-1, 1] (ObservationEncoder)
    # standardize observations by their running mean and variance (RunningObsNormalizer), saved
    # with the policy; clipped to +-obs_clip
    normalize_obs: bool = False
    obs_clip: float = DEFAULT_OBS_CLIP  # normalized observations are clipped to +-obs_clip
    reward_scale: float = 1.0  # multiplies the rewards the learner sees (logged returns: unscaled)
    seed: int = 0  # seeds torch, the envs' resets and the random actions and batch sampling
    device: str = "cpu"  # where envs, buffers and networks live: "cpu", "cuda", "cuda:N" or "auto"
    log_every: int = 1_000  # env steps between metric rows

    def __post_init__(self) -> None:
        check_settings(self)
        if self.normalize_obs and self.rescale_obs:
            raise ValueError(
                "rescale_obs=true and normalize_obs=true are not allowed together; use one (the running "
                "normalizer standardizes every coordinate, so the fixed map from the bounds adds nothing)"
            )


# Config fields that are sizes of one process's share of the work: a data-parallel run of K
# processes gives each 1/K of them (its envs, its replay buffer, its part of every batch), so the
# K ranks together collect, store and learn from what one process would.
SPLIT_OVER_RANKS = ("num_envs", "batch_size", "actor_batch_size", "buffer_size")


def rank_share(config):
    """This rank's config in a data-parallel run (``config`` itself in one process); every
    algorithm's ``train`` starts with it, so a script under ``torchrun`` trains data-parallel too.

    Each of the K ranks steps ``num_envs / K`` envs and keeps ``buffer_size / K`` transitions, and
    learns from ``batch_size / K`` (``actor_batch_size / K``) samples per learner step, whose
    gradients are averaged over the ranks: together the batch one process would use. Env-step
    counts (budget, learning_starts, logging, checkpoints, schedules) count every rank's steps, so
    they keep their meaning. Rank r seeds everything from ``distributed.rank_seed(seed, r)`` (rank
    0 from ``seed``); the networks are then made rank 0's when the loop starts.

    Raises:
        ValueError: a size that K does not divide, naming it and K.
    """
    k = dp.world_size()
    if k == 1 or getattr(config, "_rank_share", False):
        return config
    changes = {}
    for name in SPLIT_OVER_RANKS:
        value = getattr(config, name, None)
        if value is None:
            continue
        if value % k:
            error = ValueError(
                f"{name}={value} does not split over {k} processes: use a multiple of {k} (each "
                f"process takes {name} / {k})"
            )
            error.raised_on_every_rank = True  # the same config on every rank: printed once
            raise error
        changes[name] = value // k
    changes["seed"] = dp.rank_seed(config.seed, dp.rank())
    share = dataclasses.replace(config, **changes)
    share._rank_share = True  # not a field: a second call (svi -> its rollout loop) keeps it as is
    return share
