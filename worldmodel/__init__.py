"""World models over trajectory windows: probabilistic ensemble, RSSM and diffusion.

    import worldmodel
    model = worldmodel.load("model.pt")          # or "runs:/<id>/model", "models:/name/1"
    state = model.observe(model.initial_state(1), obs, prev_action, is_first)
    state, pred = model.imagine(state, actions)
"""

from worldmodel.interface import Prediction, State, WorldModel, index_state, merge_state, repeat_state
from worldmodel.io import load

__all__ = ["Prediction", "State", "WorldModel", "index_state", "load", "merge_state", "repeat_state"]
