# LoRA Lab for a Hugging Face Docker Space (README front matter: `sdk: docker`, `app_port: 7860`).
# Also runs anywhere with Docker: docker build -t lora-lab . && docker run --gpus all -p 7860:7860 lora-lab
# See docs/deploying.md. No secrets go into the image: HF_TOKEN comes from the environment at run time.
FROM python:3.11-slim

# torch goes in first and pinned, from PyPI, whose default Linux wheel is the CUDA build: 2.10.x is built for
# CUDA 12.8; 2.11 and later are built for CUDA 13 and need an NVIDIA driver >= 580.
# It may hold several words, e.g.
#   --build-arg TORCH_SPEC="torch==2.10.0 --index-url https://download.pytorch.org/whl/cu126"
ARG TORCH_SPEC="torch==2.10.0"

ENV HOME=/home/user \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# torch_compile (offered on the New run page) builds its kernels with a C/C++ compiler: inductor's C++ on CPU,
# Triton's launchers on GPU. The slim base has none. DL3008: Debian's bookworm g++ is what this base pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

# Spaces run the container as uid 1000; everything the app writes (HOME, the venv, the source tree) is that user's.
RUN useradd --create-home --uid 1000 user \
    && install -d -o user -g user /opt/venv /home/user/app
USER 1000
WORKDIR /home/user/app

# DL3013 (pin versions in pip): the version is pinned inside TORCH_SPEC, which hadolint cannot see through.
# TORCH_SPEC is left unquoted on purpose so that it may hold several words.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir $TORCH_SPEC

# Dependencies from pyproject.toml alone (a layer that survives source edits), at the tested versions of
# constraints.txt (scripts/lock.sh), torch held at the version above; with the qlora extra (bitsandbytes), since a
# Space's GPU can train load_in_4bit runs.
COPY --chown=user:user pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['qlora']))" > /tmp/requirements.txt \
    && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch.txt \
    && pip install --no-cache-dir --requirement /tmp/requirements.txt --constraint constraints.txt \
        --constraint /tmp/torch.txt \
    && rm /tmp/requirements.txt /tmp/torch.txt

# The app runs from its source tree (it launches `accelerate launch finetune/train.py` and reads configs/),
# so the project is installed editable, in place.
COPY --chown=user:user . .
RUN pip install --no-cache-dir --no-deps --editable .

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ.get('PORT', '7860'), timeout=4)"]

# LORA_LAB_HOME: /data/lora-lab with persistent storage, else $HOME/lora-lab; port from $PORT (default 7860).
CMD ["scripts/start-space.sh"]
