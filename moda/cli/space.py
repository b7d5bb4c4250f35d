"""`moda space MODEL SPACE_ID`: a Hugging Face Space that describes product photos with a MODA model on the Hub.

    moda space your-name/moda your-name/moda-demo                        # writes the Space, creates it, uploads it
    moda space your-name/moda your-name/moda-demo --revision exp --private
    moda space your-name/moda your-name/moda-demo --output_dir space     # only writes the folder: nothing is pushed

The Space (app.py, space.json, requirements.txt, README.md with its front matter, image_io_moda.py, examples/) needs
no moda package: it runs the model's own code, pinned to the commit MODEL's --revision (default: main) points to now,
and only describes (search needs the moda package). hub_card/space.py says why. The Hub address comes from
huggingface_hub (HF_ENDPOINT), the token from HF_TOKEN or `hf auth login`.
"""

import sys

from moda.io.errors import run_command
from moda.io.options import add_model_option, add_option, add_revision_option, command_parser


def main(argv=None) -> int:
    parser = command_parser("space", __doc__)
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="the MODA model repo on the Hub, namespace/name (or --model_name_or_path)")
    parser.add_argument("space_id", metavar="SPACE_ID", help="the Space to create or update, namespace/name")
    add_model_option(parser, required=False, dest="model_option", help="MODEL, given as an option")
    add_revision_option(parser, help="the model's branch, tag or commit (default: main); the Space runs the commit "
                                     "it names")
    add_option(parser, "output_dir", default=None,
               help="only write the Space into this folder (new, empty, or written so before); no push")
    add_option(parser, "private", action="store_true", default=None, help="create the Space private")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.model_option is None):
        parser.error("give MODEL once: as the first argument or as --model_name_or_path")
    return run_command("moda space", space, args)


def space(args) -> int:
    from hub_card.space import make_space  # imported when the command runs: `moda --help` stays light

    model = args.model or args.model_option
    made = make_space(model, args.space_id, revision=args.revision, private=args.private, output_dir=args.output_dir)
    if made["folder"] is not None:
        print(f"wrote the Space for {model} at commit {made['model_commit']} to {made['folder']} (not pushed)")
    else:
        print(f"pushed the Space {args.space_id} at commit {made['space_commit']}: it runs {model} at commit "
              f"{made['model_commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
