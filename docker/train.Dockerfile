# GPU training and evaluation image: CUDA PyTorch + this package's core (no Ray, decord or simulators:
# training reads the token cache only) + what train/evaluate.py needs (PyAV to decode the real frames,
# scipy / scikit-learn / matplotlib, the metric weights). Build from the repo root:
#   docker build -f docker/train.Dockerfile -t flam-train .
# Run one node:  docker run --gpus all --ipc=host -v /data:/data flam-train \
#   --nproc_per_node=8 -m train.lam --config configs/multigrid.yaml data.root=/data
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=8

WORKDIR /opt/flam
COPY pyproject.toml README.md requirements-eval-nodeps.txt ./
COPY shards ./shards
COPY model ./model
COPY train ./train
COPY configs ./configs
# The core extra only: torch comes from the base image (its pin satisfies torch>=2.4), numpy stays 2.x.
# hadolint ignore=DL3013
RUN pip install --no-deps . \
    && pip install "einops>=0.7" "pyyaml>=6" "tqdm>=4.60" "tensorboard>=2.14" "pillow>=10" \
        "av>=12" "scipy>=1.10" "scikit-learn>=1.3" "matplotlib>=3.7" \
    && pip install --no-deps -r requirements-eval-nodeps.txt

# Multi-node: pass --nnodes, --node_rank or --rdzv-backend=c10d --rdzv-endpoint=HEAD:29500 before the script.
ENTRYPOINT ["torchrun"]
CMD ["--nproc_per_node=gpu", "-m", "train.lam", "--config", "configs/multigrid.yaml"]
