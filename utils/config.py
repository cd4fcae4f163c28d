"""One dataclass per script, turned into an argparse parser.

Precedence: dataclass defaults < --preset < --config FILE (JSON or YAML) < command line.
Unknown keys in a config file or preset are an error, so a typo never silently falls back
to a default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

from utils.files import DataError, read_text


class ConfigError(ValueError):
    pass


def _field_type(tp):
    """Unwrap `X | None` and return (base type, is_list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config type {tp}")
        return _field_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def _coerce(name: str, value, tp):
    base, is_list = _field_type(tp)
    if value is None:
        return None
    if is_list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}' expects a list, got {value!r}")
        return [_coerce(name, v, base) for v in value]
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{name}' expects true/false, got {value!r}")
    if base is float and isinstance(value, int):
        return float(value)
    if base in (int, float, str) and not isinstance(value, base):
        raise ConfigError(f"config key '{name}' expects {base.__name__}, got {value!r}")
    return value


def build_parser(cls, description: str | None = None, presets: dict | None = None):
    hints = typing.get_type_hints(cls)
    # No abbreviations: "--epoch" must not silently mean "--epochs".
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="JSON or YAML file of config keys")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help="named group of settings; other flags still override it")
    for f in dataclasses.fields(cls):
        base, is_list = _field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = dict(help=f.metadata.get("help", " "), default=default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif is_list:
            parser.add_argument(flag, type=base, nargs="*", **kwargs)
        else:
            parser.add_argument(flag, type=base, **kwargs)
    return parser


def _load_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        text = read_text(p)
    except DataError as err:
        raise ConfigError(str(err)) from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as err:   # json.JSONDecodeError
            raise ConfigError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping of keys to values")
    return data


def _apply(values: dict, updates: dict, cls, source: str):
    hints = typing.get_type_hints(cls)
    for key, value in updates.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise ConfigError(f"{source}: unknown config key '{key}'")
        try:
            values[name] = _coerce(name, value, hints[name])
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None


def parse_config(cls, argv=None, description: str | None = None, presets: dict | None = None):
    """Parse argv into an instance of the dataclass `cls` (see module docstring)."""
    parser = build_parser(cls, description, presets)
    args = parser.parse_args(argv)
    # Parse again with every default suppressed to learn which flags were given.
    given = argparse.ArgumentParser(add_help=False, allow_abbrev=False,
                                    argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            kwargs = dict(dest=action.dest)
            if isinstance(action, argparse.BooleanOptionalAction):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(type=action.type, nargs=action.nargs)
            given.add_argument(*action.option_strings, **kwargs)
    explicit = vars(given.parse_known_args(argv)[0])
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    try:
        if presets and args.preset:
            _apply(values, presets[args.preset], cls, f"preset '{args.preset}'")
        if args.config:
            _apply(values, _load_file(args.config), cls, args.config)
        _apply(values, {k: v for k, v in explicit.items() if k not in ("config", "preset")},
               cls, "command line")
    except ConfigError as err:
        parser.error(str(err))
    return cls(**values)


def peek(argv, key: str, default: str) -> str:
    """The value of one key before the full parse, from the command line or else --config FILE:
    for a script whose key (train_fusion.py's --dataset) picks which config class parses the rest."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--" + key.replace("_", "-"), dest="value", default=None)
    probe.add_argument("--config", default=None)
    args, _ = probe.parse_known_args(argv)
    if args.value is None and args.config:
        try:
            args.value = _load_file(args.config).get(key)
        except ConfigError:
            pass   # the full parse reports it, with the usage line
    return str(args.value) if args.value is not None else default


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
