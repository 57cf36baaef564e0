"""Bad config values, through the config dataclasses and ``build_config`` (recipe < file < --set):
each is refused when the config is built, with one line naming the key, the value and what is
allowed, before anything is trained or written."""

from __future__ import annotations

import dataclasses

import pytest

from rl_as_inference.algos import REGISTRY, em, mpo, sac, settings, softq, svi, vmpo
from rl_as_inference.config import build_config

CONFIGS = {
    "sac": sac.SACConfig,
    "svi": svi.SVIConfig,
    "em": em.EMConfig,
    "mpo": mpo.MPOConfig,
    "vmpo": vmpo.VMPOConfig,
    "softq": softq.SoftQConfig,
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("gamma", 1.5, r"gamma=1.5 is not allowed; use a number in \(0, 1\], the per-step continuation"),
        ("gamma", 0.0, r"gamma=0.0 is not allowed"),
        ("gamma", float("nan"), r"gamma=nan is not allowed"),
        ("total_env_steps", -100, r"total_env_steps=-100 is not allowed; use an int >= 1"),
        ("total_env_steps", 2.5, r"total_env_steps=2.5 is not allowed; use an int >= 1"),
        ("num_envs", 0, r"num_envs=0 is not allowed; use an int >= 1"),
        ("log_every", 0, r"log_every=0 is not allowed; use an int >= 1"),
        ("seed", -1, r"seed=-1 is not allowed; use an int in \[0, 4294967295\]"),
        ("seed", 2**40, r"seed=1099511627776 is not allowed"),
        ("exploring_starts", 1.5, r"exploring_starts=1.5 is not allowed; use a number in \[0, 1\]"),
        ("rescale_obs", 1, r"rescale_obs=1 is not allowed; use true or false"),
        ("device", "tpu", r"device='tpu' is not allowed; use 'cpu'"),
        ("env", "NoSuchEnv-v9", r"env='NoSuchEnv-v9' is not a registered Gymnasium id"),
        ("env", "os:system", r"env='os:system' names a module to import"),
        ("hidden", (), r"hidden=\(\) is not allowed; use a non-empty list of layer widths"),
        ("hidden", (64, 0), r"hidden=\(64, 0\) is not allowed"),
        ("tau", 0.0, r"tau=0.0 is not allowed; use a number in \(0, 1\]"),
        ("n_step", 0, r"n_step=0 is not allowed; use an int >= 1"),
        ("trace_lambda", -0.1, r"trace_lambda=-0.1 is not allowed; use a number in \[0, 1\]"),
        ("batch_size", 0, r"batch_size=0 is not allowed; use an int >= 1"),
        ("learning_starts", -1, r"learning_starts=-1 is not allowed; use an int >= 0"),
        ("alpha", -0.2, r"alpha=-0.2 is not allowed; use a positive finite number, or none"),
        ("alpha", float("inf"), r"alpha=inf is not allowed"),
        ("alpha_schedule", "cosine", r"alpha_schedule='cosine' is not allowed; use one of 'linear'"),
        (
            "n_step_correction",
            "tree",
            r"n_step_correction='tree' is not allowed; use one of 'none', 'retrace'",
        ),
    ],
)
def test_sac_config_refuses(key, value, message):
    with pytest.raises(ValueError, match=message):
        sac.SACConfig(**{key: value})


@pytest.mark.parametrize(
    ("algo", "key", "value", "message"),
    [
        ("vmpo", "unroll_length", 0, r"unroll_length=0 is not allowed; use an int >= 1"),
        ("svi", "horizon", -3, r"horizon=-3 is not allowed; use an int >= 1"),
        ("vmpo", "policy_lr", -1.0, r"policy_lr=-1.0 is not allowed; use a positive finite number"),
        ("vmpo", "activation", "Relu", r"activation='Relu' is not allowed; did you mean 'ReLU'\?"),
        ("vmpo", "activation", "Sigmoidal", r"activation='Sigmoidal' is not allowed; use one of"),
        ("svi", "objective", "elbo", r"objective='elbo' is not allowed; use one of 'maxent', 'kl'"),
        ("svi", "start_states", "buffer", r"start_states='buffer' is not allowed"),
        ("svi", "td_lambda", 2.0, r"td_lambda=2.0 is not allowed"),
        ("em", "kl_bound", 0.0, r"kl_bound=0.0 is not allowed; use a positive finite number"),
        ("mpo", "epsilon", -0.1, r"epsilon=-0.1 is not allowed"),
        ("mpo", "num_samples", 0, r"num_samples=0 is not allowed"),
        ("vmpo", "top_fraction", 0.0, r"top_fraction=0.0 is not allowed; use a number in \(0, 1\]"),
        (
            "vmpo",
            "max_grad_norm",
            0.0,
            r"max_grad_norm=0.0 is not allowed; use a positive finite number, or none",
        ),
        ("softq", "loss", "l1", r"loss='l1' is not allowed; use one of 'mse', 'huber'"),
        ("softq", "double_q", "yes", r"double_q='yes' is not allowed; use true or false"),
    ],
)
def test_each_algorithm_refuses_its_own_bad_values(algo, key, value, message):
    cls = CONFIGS[algo]
    assert key in {f.name for f in dataclasses.fields(cls)}, (algo, key)
    with pytest.raises(ValueError, match=message):
        cls(**{key: value})


def test_every_config_field_of_every_algorithm_has_a_rule():
    for name, algorithm in REGISTRY.items():
        for field in dataclasses.fields(algorithm.config):
            assert field.name in settings.RULES, (name, field.name)
        algorithm.config()  # the defaults pass their own rules


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["gamma=abc"], r"gamma must be a number, got 'abc'"),
        (["gamma=nan"], r"gamma=nan is not allowed"),
        (["gamma=1.5"], r"gamma=1.5 is not allowed"),
        (["total_env_steps=-100"], r"total_env_steps=-100 is not allowed"),
        (["total_env_steps=12.5"], r"total_env_steps must be an integer, got '12.5'"),
        (["hidden=[64,x]"], r"hidden must be an integer, got 'x'"),
        (["hidden=[]"], r"hidden=\(\) is not allowed"),
        (["rescale_obs=maybe"], r"rescale_obs must be true or false, got 'maybe'"),
        (["gama=0.9"], r"unknown key 'gama' for SACConfig; did you mean 'gamma'\?"),
        (["gamma"], r"--set expects key=value, got 'gamma'"),
    ],
)
def test_set_values_are_named(sets, message):
    with pytest.raises(ValueError, match=message):
        build_config(sac.SACConfig, "Pendulum-v1", "sac", sets=sets)


def test_set_activation_gets_a_hint():
    with pytest.raises(ValueError, match=r"activation='Relu' is not allowed; did you mean 'ReLU'\?"):
        build_config(vmpo.VMPOConfig, "CartPole-v1", "vmpo", sets=["activation=Relu"])


def test_set_accepts_integers_written_as_floats_and_large_seeds():
    config = build_config(
        sac.SACConfig, "Pendulum-v1", "sac", sets=["total_env_steps=1e5", "seed=4294967295"]
    )
    assert config.total_env_steps == 100_000 and config.seed == 2**32 - 1


def test_config_file_top_level_keys_then_the_algorithms_table(tmp_path):
    path = tmp_path / "c.toml"
    # top-level keys must be keys of every algorithm the file is used with (a typo is an error)
    path.write_text("gamma = 0.9\nnum_envs = 2\n[sac]\nbatch_size = 64\n[mpo]\nbatch_size = 32\n")
    notes: list[str] = []
    config = build_config(sac.SACConfig, "Pendulum-v1", "sac", file=path, notes=notes)
    assert (config.gamma, config.num_envs, config.batch_size) == (0.9, 2, 64)
    assert notes == [f"--config {path}: used [sac]; ignored [mpo] (another algorithm)"]
    notes.clear()
    config = build_config(vmpo.VMPOConfig, "Pendulum-v1", "vmpo", file=path, notes=notes)
    assert (config.gamma, config.num_envs) == (0.9, 2)
    assert notes == [f"--config {path}: no [vmpo] table; ignored [mpo], [sac] (another algorithm)"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sca]\nbatch_size = 64\n", r"table \[sca\] names no algorithm; tables may be em, mpo"),
        ("gamma = 2.0\n", r"gamma=2.0 is not allowed"),
        ("gamma = \n", r"not valid TOML"),
        ("[sac]\nbogus = 1\n", r"unknown key 'bogus' for SACConfig"),
    ],
)
def test_bad_config_files_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        build_config(sac.SACConfig, "Pendulum-v1", "sac", file=path)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"--config .*missing.toml: no such file"):
        build_config(sac.SACConfig, "Pendulum-v1", "sac", file=tmp_path / "missing.toml")
