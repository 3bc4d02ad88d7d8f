"""Record episodes of any Gymnasium env into a trajectory store.

    python -m data_pipeline record --env Pendulum-v1 --episodes 50 --policy random --seed 0 --out p.zarr

Episode k is reset with seed `seed + k` (and the random policy samples from an action space seeded
the same way), and episodes are stored in order of k, so a store holds the same data whatever
`--num-envs` is. Simulated episodes lie back to back on one clock: episode k starts one `dt` after
episode k-1's final observation, the first at `start_time` (default: when recording began).

| module | job |
| --- | --- |
| `env_schema.py` | an env as a store: known names and units, dt, rendered or flattened (Dict / Tuple) obs, schema |
| `rollout.py` | `record`: the rollout loop with a behaviour policy; commits on a clock and on SIGINT / SIGTERM |
"""

from data_pipeline.record.env_schema import (
    KNOWN_CHANNELS,
    ChannelNames,
    RenderedObservation,
    env_dt,
    flat_channel_names,
    known_channels,
    make_env,
    read_names,
    schema_for_env,
)
from data_pipeline.record.rollout import COMMIT_INTERVAL, FLUSH_BYTES, Policy, RecordInterrupted, record

__all__ = ["COMMIT_INTERVAL", "FLUSH_BYTES", "KNOWN_CHANNELS", "ChannelNames", "Policy", "RecordInterrupted",
           "RenderedObservation", "env_dt", "flat_channel_names", "known_channels", "make_env", "read_names", "record",
           "schema_for_env"]
