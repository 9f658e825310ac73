"""One tokenize job's settings, each input's shard name, and the cores the job runs on.

Built and checked before any input is read (by ``tokenize.run``, and once for all the datatrove tasks of
``tokenize_tasks``): two inputs that would give one shard name, a half-given --language/--domain or
--threads 0 stop the run before it starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from experiment.data import naming, sources
from experiment.data.errors import DataError


@dataclass(frozen=True)
class TokenizeConfig:
    """One validated tokenize job (built by the CLI)."""

    inputs: list[Path]
    output: Path
    tokenizer: Path
    text_key: str = "text"
    backend: str = "auto"  # auto | gigatoken | reference
    language: str | None = None
    domain: str | None = None
    subdomain: str | None = None
    eod_token: str | None = None
    block_bytes: int = 32 << 20
    reserve_bytes: int = 0
    spot_check: bool = True
    progress: bool = True
    cache_dir: Path | None = None  # where the tokenizer.json converted for gigatoken is kept (None: not kept)
    whole_files: bool = True  # plain .jsonl read and encoded whole by gigatoken (``whole_files``), else by block
    whole_file_bytes: int = 512 << 20  # larger .jsonl files are read by block (their ids are held whole)
    group_bytes: int = 128 << 20  # whole files encoded together, at most this much text per call
    threads: int | None = None  # encoder/parser threads (None: all cores; see ``apply_threads``)
    share: tuple[Path, ...] | None = None  # only these inputs (one datatrove task's); names count over all inputs
    # auto: below this much input the reference encodes: loading a fast backend, importing awkward and the
    # probe cost ~0.25 s, more than the reference takes for it (a 1-document run: 0.62 -> 0.37 s wall).
    small_input_bytes: int = 256 << 10


def output_name(path: Path, index: int, cfg: TokenizeConfig) -> naming.ShardName:
    """The uncounted shard name of an input: from its file name, or from --language/--domain."""
    stem = sources.stem_of(path)
    if cfg.language is None and cfg.domain is None and cfg.subdomain is None:
        candidate = stem if stem.endswith("_text_document") else f"{stem}_text_document"
        try:
            name = naming.parse(candidate)
        except naming.ShardNameError:
            raise DataError(
                path, "cannot read language/domain from the file name",
                "name inputs {lang}_{domain}_{subdomain}_split_{id}.jsonl or pass --language and --domain",
            ) from None
        return naming.make(name.language, name.domain, name.subdomain, name.split)
    if not (cfg.language and cfg.domain):
        raise DataError(path, "--language and --domain must be given together", "pass both (and optionally --subdomain)")
    sub = cfg.subdomain or "".join(c if c.isalnum() or c in ".-" else "-" for c in stem)
    try:
        return naming.make(cfg.language, cfg.domain, sub, f"{index:04d}")
    except naming.ShardNameError as err:
        raise DataError(path, str(err), "pass valid --language/--domain/--subdomain") from None


def apply_threads(threads: int | None, arrow: bool = False) -> None:
    """Use ``threads`` cores in this process: gigatoken's rayon pool (read when the pool starts, i.e. before
    the first parallel encode of the process) and, with ``arrow`` (inputs pyarrow parses), pyarrow's;
    sentencepiece takes it per call. A run of plain JSONL files never imports pyarrow (0.2-0.3 s)."""
    if threads is None:
        return
    if threads < 1:
        raise DataError("--threads", f"must be at least 1, not {threads}", "pass --threads 1 or more")
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    if arrow:
        import pyarrow as pa

        pa.set_cpu_count(threads)


def input_names(cfg: TokenizeConfig) -> tuple[list[Path], list[naming.ShardName]]:
    """Every input (sorted) and its uncounted shard name; two inputs may not give one name."""
    inputs = sources.find_inputs(cfg.inputs)
    names = [output_name(p, i, cfg) for i, p in enumerate(inputs)]
    seen: dict[str, Path] = {}
    for path, name in zip(inputs, names):
        if name.stem in seen:
            raise DataError(path, f"gives the same shard name {name.stem} as {seen[name.stem]}", "rename one of the inputs")
        seen[name.stem] = path
    return inputs, names
