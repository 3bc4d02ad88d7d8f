"""Counterfactual scenarios: spec, starts, rollout, the scenario store, summaries and plots."""
