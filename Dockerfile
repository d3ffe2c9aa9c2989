# LoRA Lab dashboard image. CPU by default; for NVIDIA GPUs build with
#   docker build --build-arg TORCH_VARIANT=cu128 -t lora-lab:cuda .
# and run with `docker run --gpus all -p 8501:8501 lora-lab:cuda` (the CUDA wheels bring their own runtime).
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LORA_LAB_RUNS_DIR=/data/runs \
    LORA_LAB_USERS_FILE=/data/users.json \
    LORA_LAB_DATA_ROOTS=/data/datasets

WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*

# Same steps as `make app` (README): a venv in .venv, then requirements.txt; torch comes from the
# variant's wheel index so the CPU image does not pull a multi-GB CUDA build.
COPY requirements.txt requirements-nodeps.txt ./
RUN python -m venv .venv \
 && .venv/bin/pip install --extra-index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" -r requirements.txt \
 && .venv/bin/pip install --no-deps -r requirements-nodeps.txt \
 && touch .venv/.req-app

COPY . .
VOLUME /data
EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"
# A team server: sign-in required (local accounts in /data/users.json, or an identity provider in a mounted
# .streamlit/secrets.toml, which also holds the cookie secret); without sign-in configured it refuses to start
# and says how to configure it (README, "Serve it to your team").
CMD ["make", "serve", "HOST=0.0.0.0"]
