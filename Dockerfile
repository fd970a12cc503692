# syntax=docker/dockerfile:1
# The jarvis-memory daemon (tests/test_container.py runs this file's command lines).
#
#   docker build -t jarvis-memory .
#   docker run -d --name jarvis-memory -p 127.0.0.1:50051:50051 -v jarvis-data:/data jarvis-memory
#   docker exec jarvis-memory jarvis-memory token create --db /data/jarvis.db --role writer --namespace home
#
# It listens on 0.0.0.0:50051 with its SQLite database in the /data volume, and requires a
# credential (JARVIS_MEMORY_REQUIRE_AUTH=1): an API token, or a JWT signed with
# JARVIS_MEMORY_JWT_SECRET. Health and reflection need none. Every `serve` flag has its
# JARVIS_MEMORY_* variable (README, "Configuration"); `docker run ... jarvis-memory <command>`
# runs another command (`token`, `backup`, `export`...).

# -- build: the project's wheel, and the wheels of everything it depends on -----------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip wheel --wheel-dir /wheels .

# -- runtime: those wheels installed, nothing else --------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels jarvis-memory
RUN groupadd --system --gid 10001 jarvis \
    && useradd --system --uid 10001 --gid jarvis --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin jarvis \
    && mkdir /data && chown jarvis:jarvis /data
# Auth on: a container listens beyond loopback, which the daemon refuses with auth off.
ENV JARVIS_MEMORY_REQUIRE_AUTH=1
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["jarvis-memory", "health", "--addr", "127.0.0.1:50051"]
# SIGTERM (docker stop) drains in-flight calls for --grace-period (10 s): give the container
# longer than that to stop (docker stop -t 30, compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["jarvis-memory"]
CMD ["serve", "--addr", "0.0.0.0:50051", "--db", "/data/jarvis.db"]
