# The project's image: the base image of every KFP component and the Katib trial container.
# Tag it with the package version (the components reference ghcr.io/longtail-ml/longtail:<version>):
#   docker build -t ghcr.io/longtail-ml/longtail:$(python -c 'import longtail; print(longtail.__version__)') .
# GPU nodes: build FROM a CUDA runtime image instead (the torch pin in pyproject.toml decides the wheel).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 OMP_NUM_THREADS=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 git && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/longtail
COPY pyproject.toml README.md ./
COPY longtail ./longtail
COPY feature_store ./feature_store
COPY feature_repo ./feature_repo
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
# every layer with its integrations ([all]); feature_repo/ stays beside feature_store/ as the template
# of each run's working repo. DuckDB's httpfs extension is installed now so that S3 parquet sources
# need no download at run time.
RUN pip install --upgrade pip && pip install -e '.[all]' \
    && python -c "import duckdb; duckdb.install_extension('httpfs')"

USER 1000:1000
ENTRYPOINT []
CMD ["longtail", "--help"]
