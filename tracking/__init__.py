"""MLflow tracking: the buffered logger, lineage and model publishing."""
