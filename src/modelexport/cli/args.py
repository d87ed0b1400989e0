"""Argument groups shared by the verbs (defined once, as Polygraphy does)."""
from __future__ import annotations


def add_path(parser, help_text: str = "an ONNX file or an exported folder") -> None:
    parser.add_argument("path", metavar="PATH", help=help_text)


def add_format(parser, choices=("tree", "json", "csv"), default: str = "tree") -> None:
    parser.add_argument("--format", choices=choices, default=default,
                        help=f"output format (default: {default}); json is stable and documented in the README")


def add_tree_selection(parser) -> None:
    parser.add_argument("--depth", type=int, default=None, help="show modules down to this depth (root = 0)")
    parser.add_argument("--filter", dest="pattern", default=None,
                        help="only modules whose path matches this glob (and their ancestors), e.g. '*.attention'")


def add_force(parser, what: str = "output files") -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"replace existing {what} (never a file this command reads)")


def add_model_inputs(parser) -> None:
    """What to run the model on (diff, sensitivity, quantize --target-*): several inputs aggregate."""
    parser.add_argument("--inputs", default=None, metavar="FILE.npz", help="arrays by input name (one run)")
    parser.add_argument("--text", action="append", default=[], metavar="TEXT",
                        help="a text, through the folder's tokenizer (repeatable; one run each)")
    parser.add_argument("--text-file", default=None, metavar="FILE", help="texts, one per line")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image, through the folder's image processor (repeatable)")
