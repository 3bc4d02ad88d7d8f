"""`python -m envs.live` keeps working: the live twin now lives in `twin.live` (`python -m twin.live`)."""

from twin.live import main

if __name__ == "__main__":
    from data_pipeline.errors import run_cli

    raise SystemExit(run_cli(main, "python -m envs.live"))
