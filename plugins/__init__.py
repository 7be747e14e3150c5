"""alignbench's built-in plugins (installed as ``alignbench_plugins``), written only against the public API."""
