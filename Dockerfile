FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY broadcaster ./broadcaster
COPY channels ./channels
COPY workers ./workers
RUN pip install . && useradd --create-home app
COPY config ./config
USER app
EXPOSE 8000 5555
CMD ["broadcaster", "api", "--host", "0.0.0.0", "--port", "8000"]
