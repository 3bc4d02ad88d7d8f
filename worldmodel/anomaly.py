"""`python -m worldmodel.anomaly` keeps working: anomaly scores now live in `twin` (`python -m twin.calibrate`)."""

from twin.calibrate import main

if __name__ == "__main__":
    raise SystemExit(main())
