"""The operators' dashboard: `python -m twin.dashboard` serves a local web page (Panel) (docs/dashboard.md).

| module | job |
| --- | --- |
| `twin.dashboard.__main__` | the command: options, input checks, the loopback bind rule, serving until stopped |
| `twin.dashboard.app` | the page: one tab per view, built for each browser session |
| `twin.dashboard.feed` | `LiveFeed`: `twin.live`'s mirror run in a background thread, its recent rows and counters |
| `twin.dashboard.live` | the Live tab: channels against the prediction band, scores, threshold, counters, uncertainty |
| `twin.dashboard.scenarios` | the Scenario explorer tab: fan charts, outcome probabilities, calibration table |
| `twin.dashboard.data` | the Data and model tab: store summary, coverage, episodes; the model card and its MLflow run |

Imports point down: `__main__` → `app` → `live`, `scenarios`, `data` → `feed` → `twin.live`. Panel is
imported by the views only, so `import twin` stays light.
"""
