"""What every script shares: user-facing errors and YAML configs with CLI overrides.

Scripts stay thin: they parse flags, call `load_config`, build models, run one
loop, and hand every failure a user can fix to `UserError`, which `run_cli`
prints as one line with a non-zero exit code. The training runtime (precision,
checkpoints, RNG, distributed, EMA, stopping, logging) lives in `runtime/`.
"""
from __future__ import annotations

import copy
import re
import sys
import tempfile
from pathlib import Path

import yaml

from runtime.kernel_cache import bound_kernel_cache


# ----------------------------------------------------------------------------- errors

class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad file). Printed as one line."""


def run_cli(main, argv=None) -> None:
    """Run `main(argv)`; turn a UserError into `error: <message>` and exit code 2,
    and Ctrl-C into one line and exit code 130 (the shell's convention for SIGINT).
    First bounds the CPU kernel caches, which otherwise grow with every new shape."""
    bound_kernel_cache()
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` (and parents) and check we can write there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {path} ({e.strerror}); "
                        f"choose a writable folder") from None
    return path


# ----------------------------------------------------------------------------- configs

class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-4, 5E3): plain YAML
    1.1 turns them into strings, and a learning rate "1e-4" would crash the optimizer."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.subkey=value")
    key, value = text.split("=", 1)
    return key.split("."), yaml.load(value, Loader=_YamlLoader)


def add_overrides_arg(parser) -> None:
    """`--set a.b=value ...`, the CLI side of `apply_overrides`; a repeated --set adds to the
    earlier ones (argparse's default would silently keep only the last)."""
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides; a repeated --set adds to the earlier ones")


def apply_overrides(cfg: dict, overrides: list[str] | None, where: str = "config") -> dict:
    """Return a copy of `cfg` with `a.b=value` overrides applied (values parsed as YAML).

    An override may only replace a key that exists, so a typo is an error, not a
    silently ignored setting.
    """
    cfg = copy.deepcopy(cfg)
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = cfg
        for i, k in enumerate(keys):
            if not isinstance(node, dict) or k not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
                raise UserError(f"unknown config key '{'.'.join(keys[:i + 1])}' in {where}; "
                                f"known keys here: {known}")
            if i == len(keys) - 1:
                node[k] = value
            else:
                node = node[k]
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML config and apply CLI overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing YAML file (see configs/)")
    try:
        cfg = yaml.load(path.read_text(), Loader=_YamlLoader)
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return apply_overrides(cfg, overrides, where=str(path))


def require_keys(cfg: dict, keys: list[str], where: str) -> None:
    """Raise a UserError naming the first missing key of a config section."""
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise UserError(f"config {where} is missing key(s) {', '.join(missing)}; "
                        f"add them (see configs/ for complete examples)")


REPO_ROOT = Path(__file__).resolve().parent


def check_positive(values: dict, where: str | None = None, strict: bool = True) -> None:
    """Raise a UserError naming the first of `values` (name -> value) that is not a number
    > 0 (`strict`) or >= 0."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 if strict else v >= 0):
            origin = f" (from {where} or its flag)" if where else ""
            raise UserError(f"{name} = {v!r}{origin} must be a number {'>' if strict else '>='} 0")


def check_probability(values: dict, where: str | None = None) -> None:
    """Raise a UserError naming the first of `values` (name -> value) that is not a number in [0, 1]."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            origin = f" (from {where} or its flag)" if where else ""
            raise UserError(f"{name} = {v!r}{origin} must be a probability in [0, 1]")


def resolve_path(path: str | Path, base: str | Path = REPO_ROOT) -> Path:
    """A relative path in a config means the current folder when it exists there, else
    `base` (the repository root), so the shipped configs work from any working directory."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else Path(base) / path
