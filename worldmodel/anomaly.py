"""`python -m worldmodel.anomaly` keeps working: anomaly scores now live in `twin` (`python -m twin.calibrate`)."""

from twin.calibrate import main

if __name__ == "__main__":
    from data_pipeline.errors import run_cli

    raise SystemExit(run_cli(main, "python -m worldmodel.anomaly"))
