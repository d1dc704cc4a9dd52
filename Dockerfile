# subq on CUDA 13 / Ubuntu 24.04 — a thin layer over the tested scripts: setup.sh installs the packages
# and torch 2.11 (into /opt/venv), build.sh builds for Hopper (sm_90a). Run: docker run --gpus all
# subq train --config configs/quickstart.yaml
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive SUBQ_PYTHON=/opt/venv/bin/python3
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip git \
    && python3 -m venv /opt/venv && rm -rf /var/lib/apt/lists/*
# docker build --build-arg SUBQ_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) . records the commit
ARG SUBQ_BUILD_COMMIT=unknown
ENV SUBQ_BUILD_COMMIT=${SUBQ_BUILD_COMMIT}
WORKDIR /opt/subq
COPY . .
RUN scripts/setup.sh && SUBQ_CMAKE_ARGS="-DSUBQ_CUDA=ON -DSUBQ_CUDA_ARCHS=90a -DSUBQ_BUILD_TESTS=OFF" scripts/build.sh \
    && ln -s /opt/subq/build/apps/subq /usr/local/bin/subq
ENTRYPOINT ["subq"]
CMD ["--help"]
