FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY consumers ./consumers
COPY state ./state
COPY loadtest ./loadtest
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["segmenter"]
CMD ["run"]
