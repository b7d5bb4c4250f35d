"""The `moda` commands' one option vocabulary (README, "The `moda` command"): every option under its snake_case name,
its kebab-case spelling and its older names, and `--help` that shows the defaults.

    parser = command_parser("eval", __doc__)
    add_model_option(parser, help="a MODA model folder or Hub id")        # --model_name_or_path, --model, ...
    add_option(parser, "batch_size", type=int, default=16)                  # --batch_size, --batch-size

It lives here, not in moda.cli, because `moda push`'s options are hub_card's, a layer below moda.cli.
"""

import argparse

DEFAULT_SEED = 42


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and each option's default after its help; a default of None or False (unset, off)
    shows nothing: where "unset" means something, the help says what."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def command_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parser of `moda <command>`."""
    return argparse.ArgumentParser(prog=f"moda {command}", description=description, formatter_class=HelpFormatter)


def option_strings(name: str, *aliases: str) -> list:
    """--name and each alias, each in its snake_case and kebab-case spelling, without repeats."""
    strings = []
    for each in (name, *aliases):
        for spelling in (f"--{each}", f"--{each.replace('_', '-')}"):
            if spelling not in strings:
                strings.append(spelling)
    return strings


def add_option(parser, name: str, *aliases: str, **kwargs) -> argparse.Action:
    """Adds the option `name` (the attribute it sets, unless `dest` says another) under option_strings(name,
    *aliases); the other keywords are argparse's."""
    kwargs.setdefault("dest", name)
    return parser.add_argument(*option_strings(name, *aliases), **kwargs)


def add_model_option(parser, *old_names: str, help: str, required: bool = True, dest: str = "model_name_or_path"):
    """The model to load: --model_name_or_path (transformers' name), alias --model, and the command's older names."""
    return add_option(parser, "model_name_or_path", "model", *old_names, required=required, dest=dest,
                      metavar="MODEL", help=help)


def add_revision_option(parser, help: str = "a Hub revision of the model to pin (a commit hash; a branch or tag "
                                            "can move)"):
    return add_option(parser, "revision", default=None, help=help)


def add_dataset_option(parser, *old_names: str, help: str, required: bool = True, dest: str = "dataset"):
    """The data: --dataset, alias --dataset_name, and the command's older names for the same thing."""
    return add_option(parser, "dataset", "dataset_name", *old_names, required=required, dest=dest,
                      metavar="DATASET", help=help)


def add_precision_option(parser) -> argparse.Action:
    """--precision auto|fp32|bf16: the dtype the model runs in (fast_generation_moda.inference_dtype decides "auto");
    MODA_PRECISION sets its default, and a bad value there is a parser error naming it."""
    from fast_generation_moda import PRECISION_CHOICES, PRECISION_VARIABLE, configured_precision

    try:
        default = configured_precision()
    except ValueError as err:
        parser.error(str(err))
    return add_option(parser, "precision", choices=PRECISION_CHOICES, default=default,
                      help="the model's precision: auto is bf16 on a CPU that computes bf16 natively (AMX or "
                           f"AVX512-BF16), fp32 on other CPUs and on GPUs ({PRECISION_VARIABLE} sets the default)")


def add_sample_options(parser) -> None:
    """--max_samples N (alias --limit): N rows drawn at random with --seed, kept in catalog order, through
    moda.data.catalog.sample_rows; a catalog file is often grouped, so its first N rows would be a skewed sample."""
    add_option(parser, "max_samples", "limit", type=int, default=None, metavar="N",
               help="use N rows drawn at random (with --seed), kept in catalog order (default: every row)")
    add_option(parser, "seed", type=int, default=DEFAULT_SEED, help="the random seed of --max_samples")


def true_or_false(value: str) -> bool:
    """The type of an on/off option written as train_hf.py writes it (`--tune_vision_tower true`)."""
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def require_at_least_one(parser, args, *names: str) -> None:
    """A parser error for the first of these counts that is set and below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
