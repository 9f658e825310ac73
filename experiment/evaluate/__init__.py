"""``experiment eval FOLDER``: lm-evaluation-harness on a run's checkpoints, with tasks shipped in
``tasks/`` that read local files only (held-out perplexity per domain, a multiple-choice task per language).

Modules: ``heldout`` (the folder's held-out documents and which domains are targets), ``harness`` (one
lm-eval call on one exported checkpoint), ``results`` (table, PNG, JSON, trackers), ``cli`` (the command).
"""
