# syntax=docker/dockerfile:1
# The kit's image. BASE is a build argument: the pinned NVIDIA PyTorch image on GPU clusters, or the
# Debian base that `nox -s build_image -- --flavor cpu` makes with mmdebstrap (see env/ and the README).
ARG BASE
FROM ${BASE}
ARG SOURCE_DATE_EPOCH=0
WORKDIR /opt/midtrain-kit
COPY . /opt/midtrain-kit
ENTRYPOINT ["experiment"]
