"""Collecting real rankings: a local ranking page, and Label Studio / Argilla files in and out.

``python -m alignbench.label groups.jsonl --out rankings.jsonl`` serves the page; the output is
the rankings file ``feedback=file`` reads. See :mod:`alignbench.label.__main__` for the commands,
:mod:`~alignbench.label.groups` for the groups file, :mod:`~alignbench.label.store` for how labels
are written, :mod:`~alignbench.label.order` for the order of groups and
:mod:`~alignbench.label.formats` for the labelling tools' formats.
"""
