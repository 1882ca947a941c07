# ssl-bench on an official CUDA PyTorch image: `docker build -t ssl-bench .`, then
# `docker run --gpus all -v "$PWD/data:/data" -v "$PWD/runs:/runs" ssl-bench fit --config cifar10/simclr`
# (docs/docker.md: W&B keys, SLURM with Apptainer or pyxis/enroot).
#
# The base image carries the torch that pyproject.toml pins (torch==2.14.1), built for CUDA 12.6 (drivers >= 525
# through CUDA's minor-version compatibility), so pip keeps it instead of downloading PyPI's build. torchvision comes
# from the PyTorch index of the same CUDA: torchvision refuses a torch built for another CUDA major version. With a
# base of another torch version, pip would replace its torch by PyPI's default build (a second multi-GB layer).
FROM pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WANDB_DIR=/runs \
    MPLBACKEND=Agg

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependencies change.
WORKDIR /opt/ssl-bench
COPY pyproject.toml .
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source, installed editable: the experiment configs stay beside the package in /opt/ssl-bench/configs.
COPY . .
RUN pip install --no-cache-dir --no-deps -e .

# A user without root; /workspace/data and /workspace/runs point at the volumes, so the defaults data.root=data/cifar10
# and run_dir=runs/... land on /data/cifar10 and /runs/...
RUN useradd --no-log-init --create-home --uid 10001 --shell /bin/bash sslbench \
    && mkdir -p /data /runs /workspace \
    && chown sslbench:sslbench /data /runs /workspace \
    && ln -s /data /workspace/data \
    && ln -s /runs /workspace/runs
USER 10001:10001
WORKDIR /workspace
VOLUME ["/data", "/runs"]

ENTRYPOINT ["ssl-bench"]
CMD ["--help"]
