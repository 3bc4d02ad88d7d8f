"""Worked examples a user adapts: physics priors for the hybrid model (`examples/priors/`), demo servers.

Importable from the repository root as `examples.<module>` (e.g. `examples.priors.pendulum:PendulumPrior`).
"""
