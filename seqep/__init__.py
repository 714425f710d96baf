"""seqep: Equilibrium Propagation for sequence classifiers with modern-Hopfield projections."""

__version__ = "0.1.0"
