"""`moda train`: train MODA, the same as `python train_hf.py` (whose options it takes)."""


def main(argv=None) -> int:
    from train_hf import command_line  # imported when the command runs: `moda --help` stays light

    return command_line(argv, prog="moda train")
