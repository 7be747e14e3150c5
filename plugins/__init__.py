"""The built-in plugins (installed as ``alignbench_plugins``), using only the public API."""
