"""deferred_imports.py: the command line's stand-ins for jax_md.rigid_body (~4 s of eager JAX work
at import that difftre never uses) NequIP (e3nn-jax and what it imports), UMA and jax_md.interpolate (scipy.interpolate) binds where JAX MD imports it, and the first attribute read
runs the real module, so code that uses it works unchanged. In a fresh interpreter (the test
process has imported JAX MD already)."""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from difftre_cli.deferred_imports import DeferredModule, defer_unused
defer_unused()
import jax_md
from jax_md import space, simulate, partition, energy
assert isinstance(sys.modules["jax_md.rigid_body"], DeferredModule), "deferred"
assert isinstance(jax_md.rigid_body, DeferredModule)
from jax_md.rigid_body import RigidBody          # the import statement of a user of the module
real = sys.modules["jax_md.rigid_body"]
assert not isinstance(real, DeferredModule) and jax_md.rigid_body is real
assert RigidBody is real.RigidBody and RigidBody.__module__ == "jax_md.rigid_body"
body = RigidBody(center=1.0, orientation=2.0)
assert body.center == 1.0
# NequIP (and GNoME): no e3nn-jax until a user reads from them; then the real module everywhere
assert "e3nn_jax" not in sys.modules and isinstance(sys.modules["jax_md._nn.nequip"], DeferredModule)
assert isinstance(energy.nequip, DeferredModule)
cfg = energy.nequip.default_config()           # the first attribute read loads it
real = sys.modules["jax_md._nn.nequip"]
assert not isinstance(real, DeferredModule) and "e3nn_jax" in sys.modules
assert jax_md.nn.nequip.model_from_config is real.model_from_config and cfg is not None
# a deferred subpackage (UMA): importing one of its submodules loads it, and the package is real
assert isinstance(sys.modules["jax_md._nn.uma"], DeferredModule)
from jax_md._nn.uma.model import UMABackbone
assert not isinstance(sys.modules["jax_md._nn.uma"], DeferredModule)
assert UMABackbone.__module__ == "jax_md._nn.uma.model"
# jax_md.interpolate (scipy.interpolate): energy's binding answers from the real module
assert isinstance(sys.modules["jax_md.interpolate"], DeferredModule)
import numpy as np
f = energy.interpolate.spline(np.linspace(0.0, 1.0, 11) ** 2, 0.1)
assert abs(float(f(np.array([0.5]))[0]) - 0.25) < 1e-3
assert not isinstance(sys.modules["jax_md.interpolate"], DeferredModule) and "scipy.interpolate" in sys.modules
print("ok")
"""


def test_deferred_submodules_load_when_used_and_then_are_real():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


CLI_SCRIPT = """
import sys
from difftre_cli import cli
from difftre_cli.deferred_imports import DeferredModule
try:
    cli.main(["train", "config=no_such_preset"])   # imports the commands, then a config error
except SystemExit as e:
    assert e.code == 2, e.code
assert "difftre_cli.commands" in sys.modules and "jax_md" in sys.modules
assert isinstance(sys.modules["jax_md.rigid_body"], DeferredModule), "the command line did not defer rigid_body"
assert "e3nn_jax" not in sys.modules, "the command line imported e3nn-jax"
assert "scipy.interpolate" not in sys.modules and isinstance(sys.modules["jax_md._nn.uma"], DeferredModule)
# pyplot and scipy.optimize wait for their first use; IPython was answered "absent" to flax only
for name in ("matplotlib.pyplot", "scipy.optimize"):
    assert isinstance(sys.modules[name], DeferredModule), name + " was imported"
assert "IPython" not in sys.modules and "flax.nnx" in sys.modules
import IPython                                       # a later import is the real package
assert hasattr(IPython, "get_ipython") and IPython.get_ipython() is None
from difftre_cli.plots import plt                    # the first plot loads pyplot, with Agg
fig, ax = plt.subplots()
ax.plot([0, 1], [1, 0])
plt.close(fig)
assert not isinstance(sys.modules["matplotlib.pyplot"], DeferredModule)
import matplotlib
assert matplotlib.get_backend().lower() == "agg"
from difftre_cli.potentials.dimenet_basis import bessel_roots   # brentq: loads scipy.optimize
import numpy as np
assert abs(bessel_roots(2, 2)[1, 0] - 4.493409457909064) < 1e-9   # first zero of j_1 (brentq)
assert not isinstance(sys.modules["scipy.optimize"], DeferredModule)
print("ok")
"""


def test_the_command_line_defers_them():
    """cli.main registers the stand-ins before it imports JAX MD (a command paid ~3 s more
    without: 9.0 vs 5.8 s of imports on 2 cores; pyplot, scipy.optimize and flax's IPython
    probe another ~0.5 s of ~2.6 s), and what it deferred still works when used."""
    out = subprocess.run([sys.executable, "-c", CLI_SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


MDA_SCRIPT = """
import io, logging, sys
stream = io.StringIO()
logging.basicConfig(stream=stream, level=logging.INFO)   # as Hydra's run log: every INFO record
from difftre_cli.deferred_imports import mdanalysis
assert "MDAnalysis" not in sys.modules
mda = mdanalysis()
assert mda is sys.modules["MDAnalysis"] and mda.Universe is not None
assert "netCDF4" not in stream.getvalue(), stream.getvalue()
assert logging.getLogger("MDAnalysis.coordinates.AMBER").level == logging.NOTSET   # restored
print("ok")
"""


def test_mdanalysis_is_imported_without_its_amber_warning():
    """Every run writes its topology with MDAnalysis, whose AMBER module warns at import that
    netCDF4 is missing ("Writing AMBER ncdf files will be slow"): not in difftre's logs."""
    out = subprocess.run([sys.executable, "-c", MDA_SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
