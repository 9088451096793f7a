"""The evaluation run (production.production_run): every requested step is run (a shorter last
chunk, not a silently dropped remainder), the chunked means equal one long run's, and the
jackknife errors over chunks behave like standard errors."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.production import production_run

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _tiny():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return assemble.build(compose(config_name="train", overrides=["config=tiny"]))


def test_remainder_chunk_is_run_and_means_match_one_chunk():
    c = _tiny()
    params = c.potential.init(jax.random.PRNGKey(0))
    chunked = production_run(c, params, 100, 250, 10, seed=3, chunk=100)     # 100 + 100 + 50 steps
    assert chunked.steps == 250 and chunked.n == 25
    whole = production_run(c, params, 100, 250, 10, seed=3, chunk=250)       # one chunk, same trajectory
    assert whole.steps == 250 and whole.n == 25 and whole.errors is None
    # the same trajectory in pieces: same snapshots, so the same means (float32 summation order aside)
    np.testing.assert_allclose(chunked.means["rdf"], whole.means["rdf"], rtol=1e-4, atol=1e-5)
    err = chunked.errors["rdf"]
    assert err.shape == chunked.means["rdf"].shape and np.all(np.isfinite(err)) and np.max(err) > 0
