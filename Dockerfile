# tmstarget BIDS App image.
#
#   docker build -t tmstarget:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -v /data/fmriprep:/data:ro -v /data/out:/out \
#       tmstarget:0.1.0 /data /out participant
#
# Two stages on Debian's own python3 (3.11) so the virtual environment made in the build stage runs
# unchanged in the final one; the final stage has no compiler, no pip cache, no apt lists.
# No "# syntax=" line on purpose: it would make BuildKit pull a frontend image from Docker Hub.
#
# Build behind a network that intercepts TLS: give the CA bundle (and, if pip needs one, a pip.conf
# naming the index) as optional build secrets,
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt --secret id=pipconf,src=/etc/pip.conf .
# pip and apt use them during the build only; they are never stored in a layer.
#
# Baked templates: the app itself reads no template at run time (it computes in the BOLD's own
# space; seed and search region are MNI coordinates). Only the demo generator `tmstarget-synth`
# reads TemplateFlow's MNI152NLin2009cAsym res-02 head and tissue maps (3 MB); they are fetched
# through templateflow at build time into TEMPLATEFLOW_HOME=/opt/templateflow. A copy placed in
# docker/templateflow/ of the build context seeds that home, so the build works offline.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions are those of the base's Debian release (bookworm); pinning them would break on each
# security update, so DL3008 is ignored on purpose.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then apt_ca=(-o "Acquire::https::CAInfo=/run/secrets/ca"); else apt_ca=(); fi \
    && apt-get "${apt_ca[@]}" update \
    && apt-get "${apt_ca[@]}" install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/tmstarget
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bids_app/ bids_app/
COPY workflows/ workflows/
# Versions come from pyproject.toml's ranges (DL3013 ignored for the same reason as above).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca --mount=type=secret,id=pipconf \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi \
    && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/tmstarget/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/tmstarget/bin/pip uninstall -y pip \
    && find /opt/tmstarget -name tests -type d -path "*/site-packages/*/tests" -prune -exec rm -rf {} + \
    && /opt/tmstarget/bin/python -m compileall -q /opt/tmstarget

# The demo generator's template, through templateflow (the seeded copy answers from disk).
ARG REQUIRE_TEMPLATES=0
ENV TEMPLATEFLOW_HOME=/opt/templateflow
COPY docker/ docker/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca; fi \
    && /opt/tmstarget/bin/python docker/bake_templates.py docker/templateflow /opt/templateflow \
       --required "${REQUIRE_TEMPLATES}"


FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="tmstarget" \
      org.opencontainers.image.description="BIDS App: connectivity-guided (sgACC-anticorrelated) left-DLPFC TMS targets from fMRIPrep outputs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="https://github.com/tmstarget/tmstarget" \
      org.opencontainers.image.url="https://github.com/tmstarget/tmstarget" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python3 only (its venv comes from the build stage): no python3-venv, pip or compiler here.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then apt_ca=(-o "Acquire::https::CAInfo=/run/secrets/ca"); else apt_ca=(); fi \
    && apt-get "${apt_ca[@]}" update \
    && apt-get "${apt_ca[@]}" install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tmstarget

COPY --from=build /opt/tmstarget /opt/tmstarget
COPY --from=build /opt/templateflow /opt/templateflow

# Runs as any user id on a read-only root (Apptainer, `docker run --read-only --user N`): everything
# that libraries would write under $HOME goes to /tmp, the one writable place besides the output and
# work dirs. NIPYPE_NO_ET: Nipype would otherwise ask the network for its latest version at import.
# The thread variables are the defaults; `--omp-nthreads N` overrides them in the process.
ENV PATH=/opt/tmstarget/bin:${PATH} \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_CONFIG_DIR=/tmp/nipype \
    NIPYPE_NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    LANG=C.UTF-8
USER 1000:1000
WORKDIR /tmp
# No CMD: as every BIDS App, it needs bids_dir output_dir analysis_level (it prints its usage).
ENTRYPOINT ["/opt/tmstarget/bin/tmstarget"]
