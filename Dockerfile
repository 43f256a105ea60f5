# The runtime image: the segmenter and nothing else (stream, consumers, state).
FROM python:3.11-slim AS runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY consumers ./consumers
COPY state ./state
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["segmenter"]
CMD ["run"]

# The development tools on top of it (the generator that docker-compose.yml runs):
# `python -m loadtest.dev`, from the source tree in /app. Never what runs in production.
FROM runtime AS dev
COPY loadtest ./loadtest
ENTRYPOINT ["python", "-m", "loadtest.dev"]
CMD ["--help"]
