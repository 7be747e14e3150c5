"""What the benchmark scripts share: the issue's model sizes and the TRL worker subprocess.

Imported as ``from _common import ...``: a script run as ``python benchmarks/<name>.py`` has this
folder first on ``sys.path``. The leading underscore keeps it out of the smoke tests' glob.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import tempfile

from alignbench.config import ModelConfig

#: The benchmark model of the issues: Llama, vocab 1024, hidden 128, ffn 512, 4 layers, 4 heads,
#: untied head (1.31 M parameters).
FULL_MODEL = ModelConfig(
    hidden_size=128,
    intermediate_size=512,
    num_layers=4,
    num_heads=4,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
#: The same shape, tiny, for ``--smoke``.
SMOKE_MODEL = ModelConfig(
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def checked_median(times: list[float], what: str) -> float:
    """Median seconds; a benchmark that measured nothing is an error."""
    value = statistics.median(times)
    if not (math.isfinite(value) and value > 0):
        raise RuntimeError(f"{what}: median time {value} — nothing was measured")
    return value


class TRLProcess:
    """One TRL worker subprocess (``command``), stepped from this process over stdin/stdout."""

    def __init__(self, command: list[str], trl_path: str | None) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if trl_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [trl_path, env.get("PYTHONPATH")]))
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
        )
        self.version, self.reason = None, None
        answer = self._read()
        if answer.startswith("ready "):
            self.version = answer.split()[1]
        else:
            self.reason = answer.removeprefix("unavailable ") or self._failure()

    def _read(self) -> str:
        """The worker's next protocol line ("" if it died)."""
        return self.process.stdout.readline().strip()

    def _failure(self) -> str:
        """The last lines the worker wrote to stderr."""
        self.log.seek(0)
        return "worker failed: " + " | ".join(self.log.read().strip().splitlines()[-3:])

    def step(self) -> float:
        """Seconds of one TRL step."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        answer = self._read()
        if not answer.startswith("step "):
            raise RuntimeError(f"TRL {self._failure()}")
        return float(answer.split()[1])

    def close(self) -> None:
        """Stop the worker."""
        if self.process.poll() is None:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)
        self.log.close()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
