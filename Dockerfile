# syntax=docker/dockerfile:1
#
# One image for every service of the Team Dashboard backend; the command picks the service:
#
#   docker run … teamdash:latest gateway      (the default)
#   docker run … teamdash:latest runner
#   docker run … teamdash:latest collector
#
# compose.yaml runs it three times behind HAProxy. Health checks are defined per service
# there (`teamdash health gateway|runner|collector`), not here, since they differ.

# -- build: install the project and its dependencies into a virtualenv -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/teamdash
ENV PATH=/opt/teamdash/bin:$PATH

WORKDIR /src
# Dependencies change less often than the code: install them in their own layer.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY shared ./shared
COPY gateway ./gateway
COPY agent_runner ./agent_runner
COPY metrics_collector ./metrics_collector
# The project itself (no test extras), not editable: the image needs no source tree.
RUN pip install --no-deps . && teamdash --help > /dev/null

# -- runtime -------------------------------------------------------------------------------
FROM python:3.11-slim

RUN groupadd --system --gid 10001 teamdash \
    && useradd --system --uid 10001 --gid teamdash --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin teamdash \
    && mkdir -p /data/state /data/workspaces \
    && chown -R teamdash:teamdash /data

COPY --from=build /opt/teamdash /opt/teamdash

ENV PATH=/opt/teamdash/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    TEAMDASH_STATE_DIR=/data/state \
    TEAMDASH_WORKSPACE_ROOT=/data/workspaces \
    TEAMDASH_GATEWAY_HOST=0.0.0.0 \
    TEAMDASH_GATEWAY_PORT=3001

USER teamdash:teamdash
WORKDIR /data
EXPOSE 3001

ENTRYPOINT ["teamdash"]
CMD ["gateway"]
