"""`moda push`: push a model folder to the Hub with its model card (hub_card.push, whose options it takes)."""


def main(argv=None) -> int:
    from hub_card.push import main as push  # imported when the command runs: `moda --help` stays light

    return push(argv)
