"""The plugin manager: loads plugins and keeps the names they register.

Plugins come from one entry-point group, ``alignbench`` (the built-ins too, through this
project's own ``pyproject.toml``), and from every ``*.py`` file in the folders given as
``plugin_dirs``. Environment variables restrict what loads, for reproducible test suites:

* ``ALIGNBENCH_DISABLE_EXTERNAL_PLUGINS=1``: load only the built-in plugins;
* ``ALIGNBENCH_PLUGINS=a,b``: load only the named entry points (built-ins always load).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from alignbench import hookspecs
from alignbench.config import (
    AlgorithmConfig,
    FeedbackConfig,
    RewardConfig,
    TaskConfig,
    store_core_schemas,
    store_plugin_schema,
)
from alignbench.errors import UNKNOWN_BY_GROUP, PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "alignbench"
BUILTIN_DISTRIBUTION = "alignbench"

#: config group -> (registration hook, base config class every registered config must subclass)
GROUPS: dict[str, tuple[str, type]] = {
    "algo": ("alignbench_register_algorithms", AlgorithmConfig),
    "reward": ("alignbench_register_rewards", RewardConfig),
    "task": ("alignbench_register_tasks", TaskConfig),
    "feedback": ("alignbench_register_feedback", FeedbackConfig),
}


@dataclass(frozen=True)
class Entry:
    """One registered name: the class the core instantiates, its config dataclass, its plugin."""

    name: str
    cls: type
    config_cls: type
    plugin: str


@dataclass
class Registry:
    """What the loaded plugins registered, by config group, and where each plugin came from."""

    pm: pluggy.PluginManager
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    loaded_dirs: list[str] = field(default_factory=list)

    def get(self, group: str, name: str) -> Entry:
        """The entry registered as ``name`` in ``group``, or an UnknownAlgorithm/Reward/Task."""
        try:
            return self.entries[group][name]
        except KeyError:
            raise UNKNOWN_BY_GROUP[group](name, self.entries.get(group, {})) from None

    def names(self, group: str) -> list[str]:
        """The sorted names registered in ``group``."""
        return sorted(self.entries.get(group, {}))


def _plugin_filter() -> tuple[bool, set[str] | None]:
    external = os.environ.get("ALIGNBENCH_DISABLE_EXTERNAL_PLUGINS", "") not in ("1", "true", "yes")
    only = os.environ.get("ALIGNBENCH_PLUGINS")
    allowed = {n.strip() for n in only.split(",") if n.strip()} if only is not None else None
    return external, allowed


def hook_typos(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """``file:line: unknown hook 'x' — did you mean 'y'?`` for each hook implementation of
    ``plugin`` whose name no hookspec has (pluggy would raise later, as a traceback, or a hook
    on a class would simply never be called)."""
    import difflib
    import inspect

    known = [name for name in dir(pm.hook) if name.startswith("alignbench_")]
    problems = []
    for attr in sorted(dir(plugin)):
        function = getattr(plugin, attr, None)
        if not hasattr(function, f"{hookspecs.PROJECT}_impl") or attr in known:
            continue
        close = difflib.get_close_matches(attr, known, n=1)
        hint = (
            f" — did you mean {close[0]!r}?" if close else " — see docs/plugins.md, Hook reference"
        )
        try:
            where = f"{inspect.getsourcefile(function)}:{inspect.getsourcelines(function)[1]}: "
        except (TypeError, OSError):
            where = ""
        problems.append(f"{where}unknown hook {attr!r}{hint}")
    return problems


def _load_entry_points(pm: pluggy.PluginManager, registry: Registry) -> None:
    external, allowed = _plugin_filter()
    for ep in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        dist = ep.dist.name if ep.dist is not None else "?"
        builtin = dist == BUILTIN_DISTRIBUTION
        if not builtin and (not external or (allowed is not None and ep.name not in allowed)):
            continue
        if pm.has_plugin(ep.name):
            # Never let a third-party entry point silently shadow (or be shadowed by) another.
            first = registry.origins.get(ep.name, "?")
            registry.failed[f"{dist}:{ep.name}"] = (
                f"entry point name {ep.name!r} is already taken by {first} — rename the entry point"
            )
            log.warning("plugin %r of %s skipped: the name is taken by %s", ep.name, dist, first)
            continue
        try:
            plugin = ep.load()
        # A broken third-party plugin must not take the others down; one that calls sys.exit at
        # import is reported, not obeyed.
        except (Exception, SystemExit) as exc:
            registry.failed[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %r (%s) failed to load and is skipped: %s", ep.name, dist, exc)
            continue
        typos = hook_typos(pm, plugin)
        if typos:
            registry.failed[ep.name] = typos[0]
            log.warning("plugin %r (%s) is skipped: %s", ep.name, dist, typos[0])
            continue
        pm.register(plugin, name=ep.name)
        registry.origins[ep.name] = f"{dist} (entry point {ep.value})"


def _import_file(path: Path) -> ModuleType:
    # Through a finder that any process can use, so launcher workers can unpickle its classes.
    from alignbench.local_plugins import module_name

    return importlib.import_module(module_name(path))


def load_plugin_dirs(registry: Registry, plugin_dirs: list[str]) -> None:
    """Import every ``*.py`` file of each folder as a plugin and register what it provides."""
    for folder in plugin_dirs:
        path = Path(folder).expanduser().resolve()
        if str(path) in registry.loaded_dirs:
            continue
        if not path.is_dir():
            raise PluginError(f"plugin_dirs: {folder!r} is not a folder — fix the path or drop it")
        for file in sorted(path.glob("*.py")):
            name = f"file:{file}"
            if registry.pm.has_plugin(name):
                continue
            try:
                module = _import_file(file)
            except (Exception, SystemExit) as exc:  # sys.exit at import: reported, not obeyed
                registry.failed[name] = f"{type(exc).__name__}: {exc}"
                log.warning("plugin file %s failed to import and is skipped: %s", file, exc)
                continue
            typos = hook_typos(registry.pm, module)
            if typos:
                registry.failed[name] = typos[0]
                log.warning("plugin file %s is skipped: %s", file, typos[0])
                continue
            registry.pm.register(module, name=name)
            registry.origins[name] = str(file)
        registry.loaded_dirs.append(str(path))
    _collect(registry)


#: How the core builds each group's class: the constructor arguments it passes.
CONSTRUCTORS: dict[str, tuple[str, ...]] = {
    "algo": ("run", "config"),
    "reward": ("config", "task"),
    "task": ("config",),
    "feedback": ("config", "task"),
}


def _check_constructor(plugin: str, group: str, name: str, cls: type) -> None:
    """The core builds ``cls(*CONSTRUCTORS[group])``: a class whose constructor cannot take
    those arguments is refused when it registers, not after stage 1 has trained."""
    wanted = CONSTRUCTORS[group]
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a class without an inspectable signature (built in C)
        return
    try:
        signature.bind(*wanted)
    except TypeError as exc:
        raise PluginError(
            f"plugin {plugin!r} registers {group} {name!r} with {cls.__name__}{signature}, but "
            f"the core builds it as {cls.__name__}({', '.join(wanted)}) ({exc}) — give its "
            f"__init__ exactly those parameters"
        ) from None


def _registrar(registry: Registry, group: str, plugin: str) -> hookspecs.Register:
    """The ``register`` callback handed to one plugin's registration hook for one group."""
    base = GROUPS[group][1]
    entries = registry.entries.setdefault(group, {})

    def register(name: str, cls: type, config_cls: type) -> None:
        if not (isinstance(config_cls, type) and issubclass(config_cls, base)):
            raise PluginError(
                f"plugin {plugin!r} registers {group} {name!r} with config {config_cls!r}: "
                f"it must be a dataclass subclassing {base.__name__}"
            )
        if "__dataclass_fields__" not in vars(config_cls):
            # A subclass of a dataclass without @dataclass of its own: its new keys would be
            # plain class attributes, unknown to Hydra, so `algo.<key>=...` would be refused.
            raise PluginError(
                f"plugin {plugin!r} registers {group} {name!r} with config "
                f"{config_cls.__name__}, which is not decorated with @dataclass — add "
                "@dataclass above its class line"
            )
        _check_constructor(plugin, group, name, cls)
        known = entries.get(name)
        if known is not None and known.plugin != plugin:
            raise PluginError(
                f"{group} {name!r} is registered twice, by {known.plugin!r} and {plugin!r} — "
                "rename one, or disable a plugin with ALIGNBENCH_PLUGINS"
            )
        entries[name] = Entry(name, cls, config_cls, plugin)
        store_plugin_schema(group, name, config_cls)

    return register


def _collect(registry: Registry) -> None:
    """Call every registration hook implementation and store what it registers."""
    for group, (hook_name, _) in GROUPS.items():
        for impl in getattr(registry.pm.hook, hook_name).get_hookimpls():
            register = _registrar(registry, group, impl.plugin_name)
            impl.function(**dict.fromkeys(impl.argnames, register))


def env_plugin_dirs() -> list[str]:
    """The folders listed in ``ALIGNBENCH_PLUGIN_DIRS`` (separated like ``PATH``)."""
    return [d for d in os.environ.get("ALIGNBENCH_PLUGIN_DIRS", "").split(os.pathsep) if d]


def build_registry(plugin_dirs: list[str] | None = None) -> Registry:
    """Build the plugin manager, load every plugin, and collect what they register.

    Loads the entry points, then the folders of ``ALIGNBENCH_PLUGIN_DIRS``, then ``plugin_dirs``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry(pm=pm)
    store_core_schemas()
    _load_entry_points(pm, registry)
    pm.check_pending()
    _collect(registry)
    folders = env_plugin_dirs() + list(plugin_dirs or [])
    if folders:
        load_plugin_dirs(registry, folders)
    pm.check_pending()
    return registry


def implementers(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    """The plugins answering ``hook_name``, leaving out wrappers and ``trylast`` defaults."""
    hook = getattr(pm.hook, hook_name)
    return [
        impl.plugin_name
        for impl in hook.get_hookimpls()
        if not (impl.trylast or impl.wrapper or impl.hookwrapper)
    ]


def engine_implementations(pm: pluggy.PluginManager) -> list[tuple[str, Any]]:
    """``(plugin name, plugin)`` of every ``alignbench_generate`` implementation the run will
    call (:meth:`alignbench.run.Run.sample`: all but wrappers, ``trylast`` ones included)."""
    hook = getattr(pm.hook, "alignbench_generate", None)
    if hook is None:
        return []
    return [
        (impl.plugin_name, impl.plugin)
        for impl in hook.get_hookimpls()
        if not (impl.wrapper or impl.hookwrapper)
    ]


def engine_plugins(pm: pluggy.PluginManager) -> list[str]:
    """The names of :func:`engine_implementations`."""
    return [name for name, _ in engine_implementations(pm)]


def describe(registry: Registry) -> dict[str, object]:
    """A JSON-ready description of every registered name and every failed plugin."""
    groups = {
        group: [
            {
                "name": entry.name,
                "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
                "config": entry.config_cls.__qualname__,
                "plugin": entry.plugin,
                "origin": registry.origins.get(entry.plugin, "?"),
            }
            for entry in sorted(registry.entries.get(group, {}).values(), key=lambda e: e.name)
        ]
        for group in GROUPS
    }
    return {"groups": groups, "failed": dict(registry.failed)}
