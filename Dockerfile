# kvs-ingest: the ingest service (and its emulator and clients) in one image.
#
#   scripts/docker/build.sh            # what CI runs: local base image if needed, secrets, tag
#   docker build -t kvs-ingest:local . # anywhere the official python image can be pulled
#
# Stages: `deps` builds wheels for the dependencies (cached until pyproject.toml changes),
# `app` builds our own wheel, `tini` fetches a static init, and `runtime` installs the wheels
# on the slim base without keeping them: no compiler, no wheels, no build tools in the image.
#
# Behind a TLS-intercepting proxy, hand the CA bundle and pip's index settings in as BuildKit
# secrets (never layers): --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
#                          --secret id=pip_conf,src=<a pip.conf with index-url / extra-index-url>
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# The secrets are optional: pip_env exports whichever of them were provided.
RUN printf '%s\n' \
      '[ -s /run/secrets/ca_bundle ] && export PIP_CERT=/run/secrets/ca_bundle' \
      '[ -s /run/secrets/pip_conf ] && export PIP_CONFIG_FILE=/run/secrets/pip_conf' \
      'true' > /usr/local/bin/pip_env
WORKDIR /build

FROM build-base AS deps
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=pip_conf \
    --mount=type=cache,target=/root/.cache/pip \
    . /usr/local/bin/pip_env \
    && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
    && pip wheel --quiet --wheel-dir /wheels -r requirements.txt

FROM build-base AS app
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=ca_bundle --mount=type=secret,id=pip_conf \
    --mount=type=cache,target=/root/.cache/pip \
    . /usr/local/bin/pip_env \
    && pip wheel --quiet --no-deps --wheel-dir /wheels .

# tini as PID 1 forwards SIGTERM to the service (so the drain runs) and reaps zombies.
FROM build-base AS tini
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tini >/dev/null \
    && cp /usr/bin/tini-static /tini

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TINI_SUBREAPER=1 \
    KVS_INGEST_HOST=0.0.0.0 \
    KVS_INGEST_PORT=8080 \
    KVS_INGEST_LOG_FORMAT=json \
    KVS_INGEST_EMBEDDED_DATA_DIR=/data
# botocore ships models for every AWS service (27 MB); the service and its clients use these.
ARG BOTOCORE_SERVICES="kinesisvideo kinesis-video-media kinesis-video-archived-media sts sso sso-oidc"
RUN --mount=type=bind,from=deps,source=/wheels,target=/wheels \
    pip install --quiet --no-cache-dir --no-index --root-user-action=ignore /wheels/*.whl \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && find "$site/numpy" -type d -name tests -prune -exec rm -rf {} + \
    && for model in "$site"/botocore/data/*/; do \
         name=$(basename "$model"); \
         case " $BOTOCORE_SERVICES " in *" $name "*) ;; *) rm -rf "$model" ;; esac; \
       done
RUN --mount=type=bind,from=app,source=/wheels,target=/wheels \
    pip install --quiet --no-cache-dir --no-index --no-deps --root-user-action=ignore /wheels/*.whl \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kvs \
    && mkdir -p /data && chown kvs:kvs /data
COPY --from=tini /tini /usr/local/bin/tini
COPY scripts/docker/healthcheck.py /usr/local/bin/kvs-ingest-healthcheck
# The only writable places are the ones the deployment mounts: /data (emulator or embedded KVS)
# and /tmp (a tmpfs); the root filesystem can be read-only.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/kvs-ingest-healthcheck"]
ENTRYPOINT ["/usr/local/bin/tini", "--", "kvs-ingest"]
CMD ["serve"]
