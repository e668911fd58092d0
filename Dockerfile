# One image for every process: api, worker, beat, flower (the command picks which).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY broadcaster ./broadcaster
COPY channels ./channels
COPY workers ./workers
RUN pip install . && useradd --create-home --uid 10001 app \
    && mkdir -p /home/app/data /home/app/flower && chown app /home/app/data /home/app/flower
COPY config ./config
USER app
ENV BROADCASTER_ENVIRONMENT=production \
    BROADCASTER_LOG_FORMAT=json \
    BROADCASTER_DATA_DIR=/home/app/data \
    BROADCASTER_BRANDS_FILE=/app/config/brands.yaml
EXPOSE 8000 5555
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"
CMD ["broadcaster", "api", "--host", "0.0.0.0", "--port", "8000"]
