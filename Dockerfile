# syntax=docker/dockerfile:1
#
# The images of the Team Dashboard backend, two targets of this one file:
#
#   runtime  the services; the command picks one:
#              docker run … teamdash:latest gateway      (the default)
#              docker run … teamdash:latest collector
#   runner   runtime plus what the default models run: Node, the Claude Code CLI (the
#            pinned CLAUDE_CODE_VERSION) and git; its command is `runner`
#
#   docker build --target runtime -t teamdash:latest .
#   docker build --target runner -t teamdash-runner:latest .
#
# compose.yaml builds both. Health checks are defined per service there (`teamdash health
# gateway|runner|collector`), not here, since they differ. Adding another CLI to the runner
# image: deploy/README.md ("The agent runner's image").

# -- build: install the project and its dependencies into a virtualenv -------------------
FROM python:3.11-slim-bookworm AS build

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

# -- runtime: every service ----------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

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

# -- node: where the runner's Node and npm come from (the CLI needs Node >= 22) -------------
FROM node:22-bookworm-slim AS node

# -- runner: the agent runner and the CLIs of its default models (agent_runner/models.toml) -
FROM runtime AS runner

# The one place of the version is agent_runner/drivers/claude.py (CLAUDE_CODE_VERSION);
# tests/deploy/test_compose.py checks that this default is the same.
ARG CLAUDE_CODE_VERSION=2.1.332

USER root
# Node's official build (same Debian release, so its libc and libstdc++ fit), npm with it.
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
# HOME points at a scratch folder while installing, so nothing root-owned lands in /data.
RUN export HOME=/tmp/build-home \
    && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && npm install -g --no-audit --no-fund "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
    && node --version && git --version \
    && claude --version | grep -F "${CLAUDE_CODE_VERSION}" \
    && rm -rf /tmp/build-home
USER teamdash:teamdash

CMD ["runner"]
