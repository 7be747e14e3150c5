"""Provenance of cached stages: what built a cached folder, and the checks before it is reused.

``stage.json`` of a cached stage records the code that built it (the git commit when the source
tree is a git checkout, a sha256 of each core module the stage runs, and of the source file of
each plugin that took part), the torch and transformers versions, torch's intra-op thread count
and a sha256 of every file the stage wrote. Before a cached folder is reused, its files must
still match their checksums and the core modules and library versions must be today's; what
does not match is refused in one line (:func:`refusal`). Plugin sources and input files (a
rankings file, a local model folder) go into the cache key itself: changing them builds a new
entry instead.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGE = Path(__file__).resolve().parent
#: Core modules whose code determines stage 1 (SFT).
#: Not config.py: the stage's resolved config values are in its key already, and the schema's
#: code changes nearly every release without changing what a stage builds.
SFT_SOURCES = (
    "batch.py",
    "budget.py",
    "cache.py",
    # The training step (fp16's loss scaler) and the stage's device and precision.
    "hardware.py",
    "models.py",
    "ops.py",
    "stages.py",
    "task.py",
)
#: Core modules whose code determines stage 2 (the reward model): stage 1's and its own (the
#: modules of ``alignbench/rm/`` the stage runs; not ``model.py``, RL's door to the result).
RM_SOURCES = (
    *SFT_SOURCES,
    "crowd.py",
    # The sampler and the static-cache decoder it runs; adapters of a LoRA reward model.
    "decoding.py",
    "lean_forward.py",
    "lora.py",
    "sampling.py",
    "rm/evaluation.py",
    "rm/feedback.py",
    "rm/groups.py",
    "rm/selection.py",
    "rm/stage.py",
    "rm/training.py",
)
#: Torch intra-op threads every stage is built with, whatever ``threads`` says: the thread count
#: changes the last bits of a training step (3 threads against 1, measured), and a thousand steps
#: turn that into another model. On 2 cores one thread was also the faster (README).
STAGE_THREADS = 1
FIX = "pass cache_rebuild=true to rebuild it (the old folder is moved aside) or delete the folder"


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def start_dir() -> Path:
    """The folder the command was started from (Hydra's runtime cwd inside a Hydra job)."""
    from hydra.utils import get_original_cwd

    try:
        return Path(get_original_cwd())
    except ValueError:  # not inside a Hydra job (tests, library use): the current folder
        return Path.cwd()


def input_path(path: str) -> Path:
    """A file or folder named in the config; a relative one is read from :func:`start_dir`."""
    given = Path(path).expanduser()
    return given if given.is_absolute() else start_dir() / given


def folder_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, hidden ones left out; each
    file read once per process while its size and modification time stay (a base model's
    folder is hashed for the job's fingerprint and for stage 1's key: gigabytes, once)."""
    return {
        file.relative_to(folder).as_posix(): _cached_sha256(file)
        for file in sorted(folder.rglob("*"))
        if file.is_file() and not any(p.startswith(".") for p in file.relative_to(folder).parts)
    }


#: ``(resolved path, file_stamp)`` -> sha256, for :func:`folder_digest`.
_FILE_HASHES: dict[tuple[str, tuple[int, ...]], str] = {}


def file_stamp(path: Path) -> tuple[int, ...]:
    """What tells a file's contents may have changed without reading them: size, modification
    and change times, inode. The change time too, because ``cp -p``, ``rsync -t`` or ``tar x``
    can rewrite a file and put its old mtime back; nothing can set ctime back."""
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _cached_sha256(path: Path) -> str:
    """:func:`sha256_file`, remembered while the file's :func:`file_stamp` stays."""
    key = (str(path.resolve()), file_stamp(path))
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def plugin_source(plugin: object) -> dict[str, str | None]:
    """The class of a plugin object, its source file and that file's sha256 (None if unknown)."""
    cls = type(plugin)
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:  # a built-in class has no source file
        file = None
    found = file is not None and Path(file).is_file()
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "file": file,
        "sha256": sha256_file(Path(file)) if found else None,
    }


def input_files(plugin: object) -> list[Path]:
    """Files a plugin reads its data from: what its optional ``input_files()`` method returns."""
    method = getattr(plugin, "input_files", None)
    return list(method()) if callable(method) else []


def key_parts(plugins: dict[str, object]) -> dict[str, Any]:
    """What of the plugins goes into a stage's cache key: source and input-file contents.

    Paths are left out (the same file elsewhere is the same input), contents are not: another
    file behind the same name, or an edited plugin, gives another key.
    """
    out: dict[str, Any] = {}
    for role, plugin in sorted(plugins.items()):
        source = plugin_source(plugin)
        inputs = [sha256_file(p) if p.is_file() else None for p in input_files(plugin)]
        out[role] = {"class": source["class"], "sha256": source["sha256"], "inputs": inputs}
    return out


def core_hashes(sources: tuple[str, ...]) -> dict[str, str]:
    """``{module file: sha256}`` of the core modules a stage runs, as this process loaded them.

    Hashed once per process (the first time they are asked for, right after start-up): a long
    sweep whose source files are edited while it runs keeps running the code it imported, so it
    must be judged by that code's hashes, not by the files now on disk.
    """
    return dict(_hashes_at_start(tuple(sources)))


@functools.cache
def _hashes_at_start(sources: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name, sha256_file(PACKAGE / name)) for name in sources)


def git_commit() -> str | None:
    """The commit of the source tree when the package runs from a git checkout, else None."""
    root = PACKAGE.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def record(folder: Path, sources: tuple[str, ...], plugins: dict[str, object]) -> dict[str, Any]:
    """The provenance of a stage just built into ``folder`` (before stage.json is written)."""
    import transformers  # only for its version: importing it costs most of a second

    core = core_hashes(sources)
    plugin_files = {role: plugin_source(p) for role, p in sorted(plugins.items())}
    code = json.dumps([core, {r: s["sha256"] for r, s in plugin_files.items()}], sort_keys=True)
    return {
        "git_commit": git_commit(),
        "code_sha256": hashlib.sha256(code.encode()).hexdigest(),
        "core_sha256": hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest(),
        "core_files": core,
        "plugins": plugin_files,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "files": folder_digest(folder),
    }


def check(path: Path, key: str, sources: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
    """Read a cached folder's stage.json and say what no longer matches (None: all matches)."""
    import transformers  # only for its version: importing it costs most of a second

    manifest = path / "stage.json"
    try:
        info = json.loads(manifest.read_text())
    except FileNotFoundError:
        return {}, "stage.json is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"stage.json is unreadable ({type(exc).__name__})"
    recorded = info.get("provenance") if isinstance(info, dict) else None
    if (
        not isinstance(recorded, dict)
        or info.get("key") != key
        or not isinstance(recorded.get("files"), dict)
        or not isinstance(recorded.get("core_files"), dict)
    ):
        return {}, f"stage.json has no provenance record for key {key}"
    for name, digest in sorted(recorded["files"].items()):
        if not (path / name).is_file():
            return info, f"{name} is missing"
        if sha256_file(path / name) != digest:
            return info, f"{name} does not match the sha256 recorded in stage.json"
    now = {"torch": torch.__version__, "transformers": transformers.__version__}
    for library, version in now.items():
        if recorded.get(library) != version:
            return info, f"built with {library} {recorded.get(library)}, this is {version}"
    old, new = recorded["core_files"], core_hashes(sources)
    changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
    if changed:
        return info, f"built by other alignbench code ({', '.join(changed)} changed)"
    return info, None


def refusal(path: Path, problem: str) -> str:
    """The one-line message refusing a cached stage folder."""
    return f"cached stage {path} cannot be reused: {problem} — {FIX}"
