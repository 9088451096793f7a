"""Molecules: internal coordinates (geometry.py), topologies (topology.py; their files:
topology_files.py), bonded energy terms (bonded.py) and their Boltzmann-inversion fit
(boltzmann.py). Foundations only: no module here imports from potentials/, observables/ or the
loops."""
