"""Configuration mistakes as one line naming where (the file or the variable), the table and the key.

The gateway reads its settings from ``BATCHGW_*`` environment variables and the TOML file named by
``BATCHGW_CONFIG_FILE``. A mistake in either stops the start with :class:`ConfigError`, whose text
is a single line such as::

    config error in gateway.toml: [providers.groq] unknown key 'model' (did you mean 'models'?)

:class:`ConfigSources` keeps what was read, so that a problem found later (an unset API key
variable, an unknown adapter option) is reported against the file or variable that set it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

ENV_PREFIX = "BATCHGW_"
CONFIG_FILE_VARIABLE = "BATCHGW_CONFIG_FILE"

OTHER_VARIABLES = frozenset(
    {
        CONFIG_FILE_VARIABLE,
        "BATCHGW_BASE_URL",  # `batchgw submit / ls / status`
        "BATCHGW_API_KEY",  # the same client commands
        "BATCHGW_DASHBOARD_GATEWAY_URL",  # `batchgw dashboard`
        "BATCHGW_CRASH_AT",  # crash points (gateway/crashpoints.py)
        "BATCHGW_FREEZE_AT",  # freeze points (the same module)
        "BATCHGW_SCREENSHOTS",  # the dashboard's browser test
    }
)
"""``BATCHGW_`` variables that are not settings but are read elsewhere in the project."""

RESERVED_PREFIXES = ("BATCHGW_TEST_",)
"""Variable prefixes reserved for the test suite; never settings."""

Loc = Sequence[str | int]


def close_matches(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """Up to ``n`` of ``choices`` that look like ``word``, best first."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when one of ``choices`` is close to ``word``, else ``""``."""
    choices = list(choices)
    close = close_matches(word, choices)
    if not close and len(word) >= 3:  # 'port' for 'worker_port': a part of the name
        close = [c for c in choices if word.lower() in c.lower()][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def table_label(table: Sequence[str | int]) -> str:
    """``[providers.groq]``, quoting the parts TOML would quote (``[catalog.overrides."groq/x"]``)."""
    parts = [p if re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else json.dumps(str(p)) for p in table]
    return "[" + ".".join(str(p) for p in parts) + "]"


@dataclass(frozen=True)
class ConfigProblem:
    """One mistake: where it was set (a file or ``environment variable NAME``), its table and what is wrong."""

    origin: str
    table: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return f"{table_label(self.table)} {self.text}" if self.table else self.text


class ConfigError(ValueError):
    """Configuration the gateway cannot start with; ``str()`` is one line."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        parts: list[str] = []
        origin: str | None = None
        for problem in self.problems:
            text = str(problem)
            if problem.origin != origin:
                origin = problem.origin
                text = f"in {origin}: {text}"
            parts.append(text)
        super().__init__(" ".join(("config error " + "; ".join(parts)).split()))


def read_config_file(name: str) -> dict[str, Any]:
    """The TOML document ``name`` (as ``BATCHGW_CONFIG_FILE`` gives it); :class:`ConfigError` if it cannot be used."""
    path = Path(name)

    def fail(text: str) -> ConfigError:
        return ConfigError([ConfigProblem(name, (), text)])

    if not path.exists():
        raise fail(f"the file does not exist ({CONFIG_FILE_VARIABLE} names it)")
    if path.is_dir():
        raise fail(f"this is a folder, not a file ({CONFIG_FILE_VARIABLE} names it)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise fail("the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"not valid TOML: {exc}") from None


def env_name(path: Loc) -> str:
    """The environment variable that sets ``path`` (``BATCHGW_LIMITS__MAX_UPLOAD_BYTES``)."""
    return ENV_PREFIX + "__".join(str(part) for part in path).upper()


def _contains(data: Any, path: Loc) -> bool:
    for part in path:
        in_table = isinstance(data, Mapping) and part in data
        in_array = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_table or in_array):
            return False
        data = data[part]
    return True


def _is_service_link(name: str, value: str) -> bool:
    """Whether Kubernetes set this variable for a Service whose name starts with the prefix (service links)."""
    if name.endswith("_SERVICE_HOST") or re.search(r"_PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$", name):
        return True
    if re.search(r"_SERVICE_PORT(_[A-Z0-9_]+)?$", name):
        return value.isdigit()
    return name.endswith("_PORT") and re.match(r"(tcp|udp|sctp)://", value) is not None


def _shape(annotation: Any) -> tuple[str, type[BaseModel] | None]:
    """``("model", M)`` for a nested model, ``("mapping", M)`` for ``dict[str, M]``, else ``("value", None)``."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return "model", arg
        if get_origin(arg) is dict:
            value = get_args(arg)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return "mapping", value
    return "value", None


def locate(root: type[BaseModel], loc: Loc) -> tuple[tuple[str, ...], str | None, tuple[str | int, ...], Any]:
    """Split an error location into (table, key, rest below the key, the model holding the key)."""
    table: list[str] = []
    model: type[BaseModel] | None = root
    i = 0
    while i < len(loc):
        part = loc[i]
        info = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if info is None:
            return tuple(table), str(part), tuple(loc[i + 1 :]), model
        name = str(part)
        shape, sub = _shape(info.annotation)
        if shape == "model" and i + 1 < len(loc):
            table.append(name)
            model, i = sub, i + 1
        elif shape == "mapping" and i + 2 < len(loc):
            table += [name, str(loc[i + 1])]
            model, i = sub, i + 2
        elif shape == "mapping" and i + 1 < len(loc):
            return (*table, name), str(loc[i + 1]), (), None
        else:
            return tuple(table), name, tuple(loc[i + 1 :]), model
    return tuple(table), None, (), model


def setting_names(model: type[BaseModel], prefix: str = ENV_PREFIX) -> list[str]:
    """Every variable name that sets a field of ``model`` or of its nested sections (not of mappings)."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        variable = prefix + name.upper()
        names.append(variable)
        shape, sub = _shape(info.annotation)
        if shape == "model" and sub is not None:
            names += setting_names(sub, variable + "__")
    return names


@dataclass
class ConfigSources:
    """What the settings were read from: the file (parsed) and the ``BATCHGW_`` variables."""

    file: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> ConfigSources:
        """Read the environment and the file it names; :class:`ConfigError` if the file cannot be used."""
        environ = os.environ if environ is None else environ
        file = environ.get(CONFIG_FILE_VARIABLE) or None
        env = {k.upper(): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)}
        return cls(file=file, data=read_config_file(file) if file else {}, env=env)

    def origin(self, path: Loc) -> str:
        """Where the value at ``path`` (or, when it is not set anywhere, its closest table) was set."""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            variable = env_name(prefix)
            if variable in self.env:
                return f"environment variable {variable}"
            if self.file and _contains(self.data, prefix):
                return self.file
            below = sorted(v for v in self.env if v.startswith(variable + "__"))
            if below:
                return f"environment variable {below[0]}"
        return self.file or "the environment"

    def problem(self, path: Loc, text: str) -> ConfigProblem:
        """A problem with the key at ``path`` (tables, then the key), attributed to where it was set."""
        return ConfigProblem(self.origin(path), tuple(str(p) for p in path[:-1]), text)

    def explain(self, error: ValidationError, root: type[BaseModel]) -> list[ConfigProblem]:
        """One problem per validation error of ``root``, without echoing any value (it may be a secret)."""
        problems: list[ConfigProblem] = []
        for item in error.errors():
            loc = item["loc"]
            table, key, rest, model = locate(root, loc)
            noun = "key" if table else "top-level key"
            if key is None:
                text = item["msg"]
            elif item["type"] == "extra_forbidden":
                known = list(model.model_fields) if model is not None else []
                text = f"unknown {noun} {key!r}{did_you_mean(key, known)}"
            elif item["type"] == "missing":
                text = f"missing {noun} {key!r}"
            else:
                where = f" (at {'.'.join(str(r) for r in rest)})" if rest else ""
                text = f"{noun} {key!r}{where}: {item['msg']}"
            problems.append(ConfigProblem(self.origin(loc), table, text))
        return problems

    def unknown_variables(self, root: type[BaseModel]) -> list[ConfigProblem]:
        """``BATCHGW_`` variables that name no setting of ``root`` and nothing else the project reads.

        Variables below a known section (``BATCHGW_LIMITS__...``) are left to validation, which
        rejects unknown keys there. Exempt: :data:`OTHER_VARIABLES`, :data:`RESERVED_PREFIXES`,
        variables a provider's ``api_key_env`` names, and Kubernetes service links.
        """
        fields = {name.upper() for name in root.model_fields}
        exempt = set(OTHER_VARIABLES) | self._key_variables()
        known = setting_names(root)
        problems = []
        for name, value in sorted(self.env.items()):
            head = name[len(ENV_PREFIX) :].split("__", 1)[0]
            if head in fields or name in exempt or name.startswith(RESERVED_PREFIXES) or _is_service_link(name, value):
                continue
            problems.append(
                ConfigProblem(f"environment variable {name}", (), f"not a setting{did_you_mean(name, known)}")
            )
        return problems

    def _key_variables(self) -> set[str]:
        names = {v.upper() for k, v in self.env.items() if k.endswith("__API_KEY_ENV")}
        providers = self.data.get("providers")
        if isinstance(providers, Mapping):
            for table in providers.values():
                if isinstance(table, Mapping) and isinstance(table.get("api_key_env"), str):
                    names.add(table["api_key_env"].upper())
        return names
