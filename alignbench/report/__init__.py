"""The report over finished sweeps (``python -m alignbench.compare``), by concern.

``jobs`` loads and groups the jobs of sweeps; ``mixing`` warns about what a table mixes;
``metrics`` picks the metrics shown; ``stats`` holds the statistics over seeds and worlds;
``tables`` writes the Markdown table; ``plots`` draws the figures; ``curves`` reads the
evaluation curves at equal compute; ``cli`` is the command line.
"""
