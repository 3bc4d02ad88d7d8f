"""Worked physics priors for the hybrid world model (worldmodel/hybrid.py; the contract is worldmodel/physics.py,
the guide docs/hybrid.md). Named in a config as `examples.priors.pendulum:PendulumPrior`.

| module | prior |
| --- | --- |
| `pendulum.py` | `PendulumPrior`: Gymnasium Pendulum-v1, a discrete `step` (semi-implicit Euler, speed clip) |
| `cartpole.py` | `CartPolePrior`: Gymnasium CartPole-v1, a continuous `derivative` (integrated by explicit Euler) |
"""
