"""The live twin: belief sync, anomaly scores and the live mirror of a stream."""
