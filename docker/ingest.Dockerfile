# Ray worker image for `make ingest` on a cluster: Ray + the simulators + codecs + this package.
# Build from the repo root:  docker build -f docker/ingest.Dockerfile -t flam-ingest .
# The Ray version must match the driver's (pyproject pins the ingest extras; the base image pins Ray).
FROM rayproject/ray:2.60.0-py311-cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    # numba (MultiGrid) caches compiled code here instead of site-packages, which may be read-only.
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /opt/flam
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users ingest ./ingest
COPY --chown=ray:users shards ./shards
COPY --chown=ray:users model ./model
COPY --chown=ray:users train ./train

# CPU torch keeps the image small; ingest never needs CUDA. Versions come from pyproject's ranges.
# hadolint ignore=DL3013
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<3" \
    && pip install ".[ingest]"

# Workers are started by the cluster launcher (`ray start --address=...`); the driver runs
# `python -m ingest DATASET --out /shared/storage ...` with RAY_ADDRESS pointing at the head.
CMD ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0"]
