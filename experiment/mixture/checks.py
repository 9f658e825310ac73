"""Everything about the data mixture that must hold before a run starts, each failure naming file and entry.

Run by ``experiment check`` (passed to ``experiment.folder.check_schema`` as its semantic check) and before ``experiment mix``:

* every data signature parses; no shard is listed twice; a count in a shard's name agrees with its signature;
* every kept shard's ``.bin``/``.idx`` exists (else: an artifact not made yet) and has the signature's size;
* the planning rules of ``experiment.mixture.weights``: probabilities sum to 1 within each level, every domain
  of ``data_ratio.json`` is in the data and the reverse (unless optional), no language loses all its shards,
  no weight so small Megatron never draws it, no blend larger than Megatron can index, and the budget is
  reachable within ``data.max_epochs``;
* the blend fits this machine's open-file limit (Megatron keeps about 3 files open per shard).
"""

from __future__ import annotations

import os

from pydantic import ValidationError

from experiment import folder as folder_module
from experiment.data.naming import ShardNameError, parse
from experiment.folder import Problem, TrainingFolder
from experiment.mixture.datatypes import MixtureError, MixturePlan, ShardTable
from experiment.mixture.plan import read_signature_shards, spec_from_folder
from experiment.mixture.weights import plan


def signature_problems(folder: TrainingFolder) -> tuple[ShardTable, list[Problem]]:
    """Read every signature; a broken one is a problem, not an exception."""
    tables: list[ShardTable] = []
    problems: list[Problem] = []
    for path in folder.signature_paths:
        if not path.is_file():
            continue  # folder.check_schema already reports it
        try:
            listed = read_signature_shards(path)
        except (ValidationError, ValueError) as err:
            first = str(err).splitlines()
            problems.append(Problem(str(path), "", f"not a valid data signature: {' '.join(first[:3])}",
                                    "regenerate it with `experiment data signature`"))
            continue
        # cheap screen (string operations) before the full parse: tc= in the name, lang_domain_ prefix
        for i, (base, lang, domain, tokens) in enumerate(zip(listed.name, listed.language, listed.domain,
                                                             listed.tokens)):
            _, sep, tc = base.rpartition("_tc=")
            if (sep and tc != str(tokens)) or not base.startswith(f"{lang}_{domain}_"):
                problems.extend(_name_problems(str(path), i, listed.row(i)))
        tables.append(listed)
    return ShardTable.concat(tables) if tables else ShardTable.from_shards([]), problems


def _name_problems(sig: str, i: int, s) -> list[Problem]:
    try:
        name = parse(s.name)
    except ShardNameError:
        return []  # names outside the convention are allowed; language/domain come from the signature
    out = []
    if name.tokens is not None and name.tokens != s.tokens:
        out.append(Problem(sig, f"shards[{i}].tokens", f"{s.name}: the name says tc={name.tokens} but the "
                           f"signature says {s.tokens}", "recount the shard (`experiment data count`)"))
    if (name.language, name.domain) != (s.language, s.domain):
        out.append(Problem(sig, f"shards[{i}]", f"{s.name}: the name says {name.language}/{name.domain} but "
                           f"the signature says {s.language}/{s.domain}", "regenerate the signature"))
    return out


def file_problems(t: ShardTable) -> list[Problem]:
    """Each shard's .bin and .idx exist and have the sizes recorded in the signature."""
    out = []
    for prefix, name, bin_bytes, idx_bytes, sig in zip(t.prefix, t.name, t.bin_bytes, t.idx_bytes, t.signature):
        for suffix, expected in ((".bin", bin_bytes), (".idx", idx_bytes)):
            path = prefix + suffix
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                out.append(Problem(sig, name, f"{path} does not exist",
                                   "tokenize the data (`experiment data tokenize`) or correct the signature root",
                                   missing_artifact=True))
                break
            if size != expected:
                out.append(Problem(sig, name, f"{path} is {size:,} bytes; the signature says {expected:,}",
                                   "the shard changed since the signature was made: regenerate the signature "
                                   "(`experiment data signature`) or restore the shard"))
    return out


#: Open files one data-loading process holds per shard once the dataset indices are cached (measured with
#: megatron-core 0.16 by bench/mix.py): the .idx memory map, the .bin file and its memory map
#: (``mmap_bin_files=True``, the default) and the three memory-mapped GPTDataset index files.
FILES_PER_SHARD = 6


def open_files_problems(n_shards: int, config_file: str) -> list[Problem]:
    """The blend must fit this machine's open-file limit, or Megatron fails with 'Too many open files'."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FILES_PER_SHARD * n_shards + 256  # + the process's own files, sockets, checkpoint writers
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return []
    can = "" if hard == resource.RLIM_INFINITY or needed <= hard else f" (the hard limit is {hard})"
    return [Problem(config_file, "data.signatures",
                    f"{n_shards:,} shards need about {needed:,} open files in each data-loading process (Megatron "
                    f"keeps {FILES_PER_SHARD} files per shard open: .idx, .bin and the cached sample indices); "
                    f"this machine allows {soft:,} (ulimit -n){can}",
                    f"raise the limit in the job script (`ulimit -n {needed}`), merge shards "
                    "(`experiment data merge`), or read .bin files without mmap (mmap_bin_files=False)")]


def check_plan(folder: TrainingFolder, shards: ShardTable) -> tuple[MixturePlan | None, list[Problem]]:
    try:
        spec = spec_from_folder(folder, shards)
        return plan(shards, spec), []
    except MixtureError as err:
        return getattr(err, "plan", None), list(err.problems)


def check_all(path, overrides: tuple[str, ...] | list[str] = ()) -> tuple[TrainingFolder | None, list[Problem]]:
    """The kit's full validation of a training folder (``--set`` overrides applied): schema, files, then
    the mixture, every problem at once."""
    return folder_module.check_schema(path, overrides, semantic=(mixture_problems,))


def load_checked(path, *, require_artifacts: bool = True, overrides: tuple[str, ...] | list[str] = ()) -> TrainingFolder:
    """The folder as a run needs it: schema, files and mixture all checked, or ``FolderError`` listing every problem."""
    return folder_module.load_schema(path, require_artifacts=require_artifacts, overrides=overrides,
                                     semantic=(mixture_problems,))


def mixture_problems(folder: TrainingFolder) -> list[Problem]:
    """All mixture problems of a folder at once (schema problems are ``experiment.folder``'s)."""
    shards, problems = signature_problems(folder)
    if problems:
        return problems
    result, problems = check_plan(folder, shards)
    if result is not None:
        problems += file_problems(result.table)
        problems += open_files_problems(len(result.table), str(folder.path / "experiment.toml"))
    return problems
