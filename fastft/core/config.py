"""Every training option, its default, its help text and its validation: one owner; and the
machinery every command's config shares (`Config`, `opt`, TOML sections).

The CLI's `fastft train` options are generated from `TrainConfig`'s fields (see `fastft.cli`),
`--print-config` and `fastft.json` print it, and a TOML file is validated by it: change a default
or a help text here and all of them change. A flag and a TOML value go through the same pydantic
validation, so they fail the same way, with the same message, before anything is created or
loaded. Cheap to import: no torch, no transformers.

`fastft export`, `chat` and `eval` are configured the same way, by `ExportConfig`
(fastft.export.config) and `ChatConfig`/`EvalConfig` (fastft.serve.config), each read from its
own `[export]`, `[chat]` or `[eval]` section of the same TOML file (train's options are its
top-level keys).
"""

from __future__ import annotations

import re
import types
from typing import Any, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_MODEL = "unsloth/Qwen3-4B-Instruct-2507"
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"]
# The optimizers worth choosing for LoRA; bitsandbytes' (8-bit, paged) need CUDA: on CPU
# they become adamw_torch, with a status line (fastft.train.autobatch.cpu_optimizer).
Optimizer = Literal["auto", "adamw_8bit", "paged_adamw_8bit", "adamw_torch", "adamw_torch_fused",
                    "paged_adamw_32bit", "adafactor", "lion_8bit", "paged_lion_8bit", "sgd"]
Checkpointing = Literal["auto", "unsloth", "true", "false"]
Padding = Literal["auto", "padded", "free"]
Compile = Literal["auto", "on", "off"]
Think = Literal["strip", "keep", "error"]
# Every number has a range, so a value the libraries would crash on (a seed numpy refuses, a
# step count past what torch's int32/64 tensors hold) fails here, naming its option.
MAX_TOKENS = 2**20
MAX_COUNT = 2**31 - 1
# A run name is one path component: it can never point outside the runs folder.
RUN_NAME_PATTERN = r"^(?!latest$)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"   # "latest" is the pointer


def opt(default: Any, help: str, flag: str | None = None, short: str | None = None,
        metavar: str | None = None, multiple: bool = False, **checks) -> Any:
    """A config field: its default, its --help text, optionally its click flag spelling (a
    switch: "--on/--off"), a short alias ("-p"), the metavar --help shows, and whether the flag
    may be repeated (each value one item of a tuple)."""
    extra = {k: v for k, v in dict(flag=flag, short=short, metavar=metavar,
                                   multiple=multiple).items() if v}
    return Field(default, description=help, json_schema_extra=extra or None, **checks)


def arg(help: str, metavar: str, default: Any = ...) -> Any:
    """A config field given as a command-line argument (METAVAR), not as a --flag."""
    return Field(default, description=help, json_schema_extra={"argument": metavar})


class Config(BaseModel):
    """A command's options: validated alike from flags, TOML and saved records."""

    # inf/nan pass a `gt=0` check yet mean nothing here, and neither TOML nor JSON round-trips them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    command: ClassVar[str]   # `fastft COMMAND`, and its section of a TOML file

    @classmethod
    def parse(cls, values: dict):
        """Validate `values` (from TOML, flags or a record); raise ConfigError naming each bad option."""
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise ConfigError(describe(e, cls)) from None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def split_commas(v):
    """A flag gives "a,b"; TOML gives a list (or one string). Both become a tuple."""
    return tuple(m.strip() for m in v.split(",") if m.strip()) if isinstance(v, str) else v


class TrainConfig(Config):
    """Everything that decides a run; saved in fastft.json so a run can be reproduced or resumed."""
    command: ClassVar[str] = "train"   # its options are a TOML file's top-level keys

    data: str = arg("Training data: a JSONL file (or JSON array) of conversations.", "DATA")
    model: str = opt(DEFAULT_MODEL, "Hub id, local folder, or `tiny` (the built-in test model).")
    name: Optional[str] = opt(None, "Run name (letters, digits, '.', '_', '-'): the run goes to "
                                    "RUNS_DIR/NAME. [default: <data>-<timestamp>]")
    runs_dir: str = opt("runs", "Folder that holds the runs.")
    load_in_4bit: bool = opt(True, "Load the base in 4-bit (QLoRA) or 16-bit (LoRA).", flag="--4bit/--16bit")
    max_seq_len: int = opt(2048, "Tokens per example; longer examples are cut.", ge=16, le=MAX_TOKENS)
    # LoRA: the field's defaults (r=16, alpha=2r, no dropout, every linear projection).
    rank: int = opt(16, "LoRA rank r.", gt=0, le=4096)
    alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha/r).", gt=0, le=65536)
    dropout: float = opt(0.0, "LoRA dropout.", ge=0, lt=1)
    target_modules: tuple[str, ...] = opt(ALL_PROJECTIONS, "Comma-separated projections to adapt.",
                                          min_length=1)
    rslora: bool = opt(False, "Rank-stabilised LoRA (scale alpha/sqrt(r)).")
    dora: bool = opt(False, "Weight-decomposed LoRA (slower).")
    # Optimisation.
    lr: float = opt(2e-4, "Peak learning rate.", gt=0, le=10)
    scheduler: Scheduler = opt("cosine", "Learning-rate schedule (cosine_with_min_lr ends at 10% of "
                                          "--lr; warmup_stable_decay decays over the last 10% of steps).")
    warmup_ratio: float = opt(0.03, "Share of the steps spent warming up the learning rate.", ge=0, lt=1)
    epochs: float = opt(3.0, "Passes over the data.", gt=0, le=100_000)
    max_steps: int = opt(-1, "Stop after this many optimizer steps (overrides --epochs; -1: off).", ge=-1, le=MAX_COUNT)
    batch_size: int = opt(2, "Micro-batch per step; batch-size x grad-accum is the effective batch.", ge=1, le=65536)
    grad_accum: int = opt(4, "Micro-batches per optimizer step.", ge=1, le=65536)
    # Data-parallel through torchrun (fastft.train.launch): one process per GPU, each with a full copy
    # of the model; batch-size x grad-accum stays the effective batch of the whole run.
    gpus: Union[int, Literal["auto"]] = opt(1, "GPUs to train on, data-parallel: N, or auto (every "
                                               "visible GPU). The effective batch stays batch-size x "
                                               "grad-accum, shared out among the GPUs.")
    auto_batch: bool = opt(True, "On a GPU, measure micro-batch, padding and checkpointing candidates "
                                 "on your data and keep the fastest that fits (same effective batch).")
    # Auto-tune's result is remembered in the fastft cache (fastft.train.tuning_cache) and reused
    # by runs of the same GPU, model, LoRA shape, length profile, budget and library versions.
    retune: bool = opt(False, "Probe the batch plan again, even where a remembered plan or the "
                              "estimate of a short run would skip the probe.")
    vram_budget: Optional[float] = opt(None, "GiB of GPU memory training may use (as on a smaller card).", gt=0, le=1_000_000)
    gradient_checkpointing: Checkpointing = opt(
        "auto", "unsloth: offload activations to CPU RAM (least VRAM); true: keep them on the GPU; "
                "false: keep every activation (fastest, most VRAM); auto: auto-batch measures them "
                "(unsloth without a GPU or with --no-auto-batch).")
    optim: Optimizer = opt("auto", "Optimizer. auto: fused 32-bit AdamW on a GPU, or 8-bit AdamW "
                                   "where its moments would take over 5% of the VRAM budget; "
                                   "adamw_torch on CPU.")
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0, le=10)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.", gt=0, le=1e6)
    seed: int = opt(42, "Random seed (data order, LoRA init, dropout).",
                    ge=0, le=2**32 - 1)
    train_on_all: bool = opt(False, "Loss on prompts too, not only on assistant turns.")
    think: Think = opt("strip", "Think blocks in the assistant data of a non-thinking model: strip, "
                                "keep, or reject the example.")
    packing: bool = opt(False, "Pack several examples per sequence.")
    padding: Padding = opt("auto", "Batches padded (compiled, fastest when lengths match) or "
                                   "padding-free (no compute on pads); auto: auto-batch measures both.")
    compile: Compile = opt("auto", "Compile each decoder block (Unsloth) during the first steps of "
                                   "padded training, for faster steps afterwards: on, off, or auto "
                                   "(off where training is estimated too short to repay what "
                                   "compiling costs).")
    group_by_length: bool = opt(True, "Put examples of similar length in the same micro-batch "
                                      "(less padding); batches are still shuffled.")
    # Evaluation and checkpoints.
    eval_split: float = opt(0.0, "Hold out this share of the data for an eval loss each epoch.", ge=0, lt=1)
    eval_file: Optional[str] = opt(None, "Eval data file (instead of --eval-split).")
    save_steps: Optional[int] = opt(None, "Checkpoint every N steps. [default: each epoch]", gt=0, le=MAX_COUNT)
    # A long epoch on a slow GPU is hours without a checkpoint; a crash would lose them all.
    save_minutes: float = opt(10.0, "Also save a checkpoint every N minutes (0: off).", ge=0,
                             le=MAX_COUNT)
    save_total_limit: int = opt(2, "Checkpoints kept (with an eval: the best and the latest).", ge=1,
                               le=MAX_COUNT)
    # Each log reads the loss off the GPU, so the CPU waits for the GPU instead of launching
    # the next step's kernels; short examples leave an H100 waiting on the CPU. On CPU there
    # is nothing to wait for.
    logging_steps: Optional[int] = opt(None, "Log loss, learning rate and tokens/s every N steps. "
                                             "[default: 10 on a GPU, 1 on CPU]", gt=0,
                                             le=MAX_COUNT)
    tensorboard: bool = opt(False, "Also log loss and learning rate for TensorBoard, in "
                                   "RUN/tensorboard/ (needs the tensorboard package).")
    skip_invalid: bool = opt(False, "Drop bad records (and report them) instead of failing.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, v):
        return split_commas(v)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v):
        return parse_gpus(v)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        if v is not None and not re.fullmatch(RUN_NAME_PATTERN, v):
            raise ValueError("use letters, digits, '.', '_', '-' (at most 100, starting with a "
                             "letter or digit; not 'latest')")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.max_steps == 0:
            raise ValueError("max_steps must be -1 (off) or a positive number of steps")
        if self.eval_file and self.eval_split:
            raise ValueError("give eval_split or eval_file, not both")
        return self

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


def parse_gpus(v) -> int | str:
    """`--gpus`: a number of GPUs (1 or more; a flag gives it as text) or "auto"."""
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError("use a number of GPUs (1 or more) or auto")
    return v


def describe(e: ValidationError, cls: type[Config] = TrainConfig) -> str:
    """One line per problem: `option (--flag): what is wrong, got VALUE`."""
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        where = f"{key} ({flag_names(key, cls)[0]})" if key in cls.model_fields else key
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        elif err["type"] == "missing":
            msg = "missing"
        elif "input" in err and not isinstance(err["input"], dict):
            msg += f", got {err['input']}"
        lines.append(f"{where}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines) if len(lines) > 1 else f"invalid config: {lines[0]}"


def extra(key: str, cls: type[Config] = TrainConfig) -> dict:
    """What `opt`/`arg` recorded about field `key` beyond pydantic's own: flag, short, ..."""
    return cls.model_fields[key].json_schema_extra or {}


def flag_names(key: str, cls: type[Config] = TrainConfig) -> list[str]:
    """The click spellings of option `key`: ["--rank"], or ["--4bit", "--16bit"] for a switch;
    an argument's metavar (["DATA"])."""
    about = extra(key, cls)
    return about.get("flag", about.get("argument") or f"--{key.replace('_', '-')}").split("/")


def switch_names(key: str, cls: type[Config] = TrainConfig) -> list[str]:
    """A switch's spellings, on then off: ["--4bit", "--16bit"], or ["--x", "--no-x"]."""
    flags = flag_names(key, cls)
    return flags if len(flags) == 2 else [flags[0], f"--no-{flags[0][2:]}"]


def literal_choices(annotation) -> tuple:
    """The values of a Literal type (its choices); () for any other type."""
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def to_toml(cfg: Config | None = None, annotate: bool = False, cls: type[Config] = TrainConfig) -> str:
    """The config as TOML, each option under its help text (`annotate`: and its flag, choices
    and default, a blank line apart); unset optional values are commented. tomlkit writes the
    values, so every string is escaped as TOML requires (control characters included)."""
    import tomlkit

    values = cfg.to_dict() if cfg is not None else {}
    doc = tomlkit.document()
    for key, f in cls.model_fields.items():
        if annotate:
            doc.add(tomlkit.nl())
        doc.add(tomlkit.comment(f.description))
        if annotate:
            doc.add(tomlkit.comment(_about(key, f, cls)))
        value = values[key] if cfg is not None else (None if f.is_required() else f.default)
        if value is None:
            doc.add(tomlkit.comment(f"{key} ="))
        else:
            doc.add(key, list(value) if isinstance(value, tuple) else value)
    return doc.as_string()


INIT_HEADER = """\
# fastft's options. Training's are the top-level keys, for `fastft train --config fastft.toml`;
# [export], [chat] and [eval] hold those commands' options, for `fastft export --config
# fastft.toml` and so on. Flags on the command line override this file. Every option is listed
# at its default under its help text: edit what you need and delete the rest to keep following
# fastft's defaults.
"""


def annotated_toml(sections: dict[str, type[Config]] | None = None) -> str:
    """`fastft init`'s file: every option at its default, under its help, flag and choices;
    training's at the top level, then one table per command of `sections`."""
    text = INIT_HEADER + to_toml(annotate=True)
    for name, cls in (sections or {}).items():
        text += f"\n\n[{name}]\n" + to_toml(annotate=True, cls=cls)
    return text


def _about(key: str, f, cls: type[Config] = TrainConfig) -> str:
    """`--rank; default 16`, `--scheduler: one of linear, cosine, ...; default "cosine"`."""
    if metavar := extra(key, cls).get("argument"):
        if f.is_required():
            usage = " ".join(a["argument"] for k in cls.model_fields
                             if (a := extra(k, cls)).get("argument"))
            return (f"required: here, or as {metavar} on the command line "
                    f"(fastft {cls.command} {usage})")
        return f"or as {metavar} on the command line; default {toml_value(f.default)}"
    flags = switch_names(key, cls) if f.annotation is bool else flag_names(key, cls)
    choices = literal_choices(f.annotation)
    about = "/".join(flags) + (f": one of {', '.join(choices)}" if choices else "")
    return about + (f"; default {toml_value(f.default)}" if f.default is not None else "; unset by default")


def toml_value(v: Any) -> str:
    """One value as TOML writes it (tomlkit: strings escaped as TOML requires)."""
    import tomlkit
    return tomlkit.item(list(v) if isinstance(v, tuple) else v).as_string()


def load_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


# A TOML value's type, as TOML names it, and the Python types tomllib gives each.
_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               list: "an array", dict: "a table"}


def _accepts(annotation, value) -> bool:
    """Whether a TOML value is of a type field `annotation` takes as it is. Flags arrive as text
    and are converted by pydantic; a TOML file says its types, and `lr = true` must not become
    lr 1.0 (pydantic's lax mode reads a boolean as 1)."""
    if annotation is Any:
        return True
    if _is_union(annotation):
        return any(_accepts(a, value) for a in get_args(annotation))
    if choices := literal_choices(annotation):
        return any(type(value) is type(c) for c in choices)
    if annotation is type(None):
        return False                     # TOML has no null: leave the key out instead
    if get_origin(annotation) is tuple:  # a list of strings, or one comma-separated string
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if annotation is float:
        return type(value) in (int, float)
    return type(value) is annotation


def _is_union(annotation) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _expected(annotation) -> str:
    args = [a for a in get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    words = []
    for a in args:
        if choices := literal_choices(a):
            words.append("one of " + ", ".join(f'"{c}"' for c in choices))
        elif get_origin(a) is tuple:
            words.append("an array of strings")
        else:
            words.append({bool: "true or false", int: "an integer", float: "a number",
                          str: "a string"}.get(a, str(a)))
    return " or ".join(words)


def check_toml(values: dict, path: str, cls: type[Config] = TrainConfig,
               table: str | None = None) -> None:
    """Every key of a TOML config (of its [table], or training's top level) is an option of
    `cls`, and holds a value of that option's type; raise ConfigError naming the file, the
    line and the key, with what it takes and what it got (`lr = true` must not train at lr
    1.0: pydantic's lax mode reads a boolean as 1)."""
    fields = cls.model_fields
    problems = []
    for key, v in values.items():
        if key not in fields:
            problems.append((key, _unknown(key, v, cls, table)))
        elif not _accepts(fields[key].annotation, v):
            problems.append((key, f"expected {_expected(fields[key].annotation)}, got "
                                  f"{_TOML_TYPES.get(type(v), type(v).__name__)} "
                                  f"({toml_value(v) if type(v) in _TOML_TYPES else v})"))
    if problems:
        raise _located(path, problems, table)


def _located(path: str, problems: list[tuple[str, str]], table: str | None = None) -> ConfigError:
    """The error for (key, what is wrong) problems of a TOML file's [table] (None: its top
    level), each as `file:line: key: what`."""
    text = _text(path)
    lines = [f"{path}:{_toml_line(text, key, table) or 0}: {f'[{table}] ' if table else ''}"
             f"{key}: {what}" for key, what in problems]
    return ConfigError(lines[0] if len(lines) == 1 else
                       f"{path}: {len(lines)} problems:\n  " + "\n  ".join(lines))


def _unknown(key: str, value, cls: type[Config], table: str | None) -> str:
    """What is wrong with a key that is no option of `cls`, and the likeliest fix."""
    import difflib

    tables = ", ".join(f"[{t}]" for t in SECTIONS)
    if table is None and isinstance(value, dict):
        if key == "train":
            return (f"unknown table: training's options are top-level keys, above the first "
                    f"table (the tables are {tables})")
        return f"unknown table (the tables are {tables})"
    near = difflib.get_close_matches(key, list(cls.model_fields), n=1)
    return "unknown option" + (f" (did you mean {near[0]}?)" if near else "")


def _text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


_TABLE_HEADER = re.compile(r"\s*\[\[?\s*([^\]]+?)\s*\]")


def _toml_line(text: str, key: str, table: str | None = None) -> int | None:
    """The line of a TOML file where `key` is set in [table] (None: at the top level, where
    `key` may also open a table), for messages: tomllib's parsed values carry no positions."""
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        if m := _TABLE_HEADER.match(line):
            current = m.group(1).strip("\"'")
            if table is None and current == key:
                return n
        elif current == table and re.match(rf"""\s*["']?{re.escape(key)}["']?\s*[=.]""", line):
            return n
    return None


# The tables of a fastft.toml that configure other commands than train (see annotated_toml).
SECTIONS = ("export", "chat", "eval")


def resolve_config(data: str | None, config_file: str | None, flags: dict) -> TrainConfig:
    """Defaults, overridden by the TOML file, overridden by the flags given on the command line."""
    values = load_toml(config_file) if config_file else {}
    for name in SECTIONS:   # the other commands' sections: theirs to read
        if isinstance(values.get(name), dict):
            del values[name]
    if config_file:
        check_toml(values, config_file)
    values.update({k: v for k, v in flags.items() if v is not None})
    if data:
        values["data"] = data
    if "data" not in values:
        raise ConfigError("give DATA (or `data = ...` in --config)")
    return TrainConfig.parse(values)


def resolve_section(cls: type[Config], config_file: str | None, given: dict):
    """A command's config: defaults, overridden by its [section] of the TOML file, overridden by
    the flags and arguments `given` on the command line (None, or () for a repeatable flag: not
    given)."""
    values: dict = {}
    if config_file:
        table = load_toml(config_file).get(cls.command, {})
        if not isinstance(table, dict):
            raise _located(config_file, [(cls.command, f"expected a table ([{cls.command}]) of "
                                                       f"{cls.command} options")])
        check_toml(table, config_file, cls, cls.command)
        values.update(table)
    values.update({k: v for k, v in given.items() if v is not None and v != ()})
    missing = [k for k, f in cls.model_fields.items() if f.is_required() and k not in values]
    if missing:
        names = " and ".join(flag_names(k, cls)[0] for k in missing)
        raise ConfigError(f"give {names} (or `{missing[0]} = ...` in the [{cls.command}] "
                          f"section of --config)")
    return cls.parse(values)
