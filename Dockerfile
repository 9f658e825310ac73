# The kit's pinned image: one recipe for the GPU image (default base: NVIDIA PyTorch, pinned by
# digest) and the CPU image (base: a Debian bookworm that `nox -s build_image -- --flavor cpu` makes
# with mmdebstrap). It installs env/<flavor>.lock.txt with hashes, then the kit, and records the
# environment hash in /etc/midtrain-kit/image.json so the kit can tell it runs in this image.
# Base digest: see README (container section): nvcr.io/nvidia/pytorch:25.08-py3 (CUDA 13.0, PyTorch 2.8 (NVIDIA build), TE 2.x, NCCL 2.27).
# Apptainerfile says the same; tests/container/test_recipes.py keeps the two in step.
ARG BASE=nvcr.io/nvidia/pytorch:25.08-py3@sha256:ace9a848c0ae543317e3c4763b6b4248961c47902625abfe3c77a0fb931c50fb
FROM ${BASE}

ARG SOURCE_DATE_EPOCH=0
ARG FLAVOR=gpu
ARG KIT_COMMIT=unknown
ARG KIT_DIRTY_DIFF_HASH=none

ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY env/cpu.lock.txt env/gpu.lock.txt /opt/midtrain-kit/env/

# build/wheelhouse: the locked wheels (CPU: every one, made on the host; GPU: only the kit's wheel)
RUN --mount=type=bind,source=build/wheelhouse,target=/wheelhouse \
    python3 -m venv --system-site-packages /opt/venv \
    && if [ "$FLAVOR" = cpu ]; then pip install --no-cache-dir --no-index --find-links /wheelhouse --no-deps --require-hashes -r /opt/midtrain-kit/env/cpu.lock.txt; else pip install --no-cache-dir --no-deps --require-hashes -r /opt/midtrain-kit/env/gpu.lock.txt; fi \
    && pip install --no-cache-dir --no-index --no-deps /wheelhouse/midtrain_kit-*.whl \
    && python3 -m experiment.lock.image record --flavor "$FLAVOR" --kit-commit "$KIT_COMMIT" --kit-dirty-diff-hash "$KIT_DIRTY_DIFF_HASH"

CMD ["experiment", "--help"]
