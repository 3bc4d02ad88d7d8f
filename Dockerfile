# twinworld on a CUDA machine, `train.py` as the entry point. Build and run (docs/cluster.md, "Docker"):
#
#   docker build -t twinworld .
#   docker run --rm --gpus all -v "$PWD/data:/data" -v "$PWD/mlflow:/mlflow" -v "$PWD/runs:/app/runs" \
#       twinworld fit --config configs/pendulum/rssm.yaml --data.store /data/p.zarr \
#       --trainer.accelerator gpu --trainer.precision bf16-mixed
#
# The torch 2.13.0 wheel from PyPI carries its own CUDA libraries; the base image sets up what the
# NVIDIA container runtime needs to expose the host's GPUs and driver.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

# Ubuntu 24.04's Python is 3.12 (the project supports 3.11 and 3.12). libgl1/libegl1: MuJoCo's headless
# rendering (MUJOCO_GL=egl) for image observations. Versions come with the pinned base image; apt pins
# would break at the distribution's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libegl1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1001 --user-group twin

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUJOCO_GL=egl \
    MLFLOW_TRACKING_URI=sqlite:////mlflow/mlflow.db \
    ZARR_ASYNC__CONCURRENCY=32

RUN python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first, from pyproject.toml (torch==2.13.0 and the tested ranges), so that editing the code
# does not reinstall them: an empty package with the same metadata installs only the dependencies.
# s3fs (the tested version) lets --data.store be an s3:// URL.
COPY pyproject.toml README.md ./
RUN mkdir data_pipeline worldmodel envs \
    && touch data_pipeline/__init__.py worldmodel/__init__.py envs/__init__.py train.py generate.py \
    && pip install --no-cache-dir . s3fs==2026.9.0 \
    && pip uninstall -y twinworld \
    && rm -rf data_pipeline worldmodel envs train.py generate.py build ./*.egg-info

COPY --chown=1001:1001 . .
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && mkdir -p /data /mlflow /app/runs \
    && chown 1001:1001 /data /mlflow /app /app/runs

# Stores are read from /data (or object storage), MLflow's SQLite file lives in /mlflow, checkpoints go
# to /app/runs (train.py's default --out_dir is `runs` under the working directory).
USER 1001:1001
VOLUME ["/data", "/mlflow", "/app/runs"]
ENTRYPOINT ["python", "train.py"]
CMD ["--help"]
