# syntax=docker/dockerfile:1
# faregate's container image: `docker build -t faregate .`
#
# Two stages: the builder turns the source into a wheel and installs it, with its dependencies,
# into a virtual environment at /opt/faregate; the final stage is a fresh slim Python with that
# environment copied in. Dependencies are installed from binary wheels only, so neither stage
# needs (or has) a compiler. tests/deploy/test_image.py runs the builder's RUN steps in a clean
# virtual environment on the test machine.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-deps . -w /wheels
RUN python -m venv /opt/faregate \
 && /opt/faregate/bin/pip install --only-binary=:all: /wheels/faregate-*.whl

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="faregate" \
      org.opencontainers.image.description="OpenAI-compatible LLM gateway with virtual keys, budgets that hold and a spend ledger" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 faregate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/faregate \
      --shell /usr/sbin/nologin faregate \
 && mkdir -p /var/lib/faregate /etc/faregate \
 && chown 10001:10001 /var/lib/faregate
COPY --from=builder /opt/faregate /opt/faregate
ENV PATH=/opt/faregate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FAREGATE_DATA_DIR=/var/lib/faregate
USER 10001:10001
WORKDIR /var/lib/faregate
EXPOSE 4000
# slim images have no curl: ask the liveness route with Python itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health/liveliness', timeout=4)"]
ENTRYPOINT ["faregate"]
CMD ["serve", "--config", "/etc/faregate/config.yaml", "--port", "4000"]
