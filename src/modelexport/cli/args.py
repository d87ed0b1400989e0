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
                        help="only modules whose path matches this glob (and their ancestors), e.g. '*.attention'; "
                        "one that matches no module is an error")


def add_force(parser, what: str = "output files") -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"replace existing {what} (never a file this command reads)")


def add_model_inputs(parser, seq_len_default: str = "8") -> None:
    """What to run the model on (profile, diff, sensitivity, quantize --target-*): one group for
    every verb that runs a model; several texts or images aggregate (one run each). Built by
    ``runtime/feeds.py``."""
    group = parser.add_argument_group("inputs (default: dummy inputs from the graph's input shapes)")
    group.add_argument("--inputs", default=None, metavar="FILE.npz", help="arrays by input name (one run)")
    group.add_argument("--text", action="append", default=[], metavar="TEXT",
                       help="a text, through the folder's tokenizer (repeatable; one run each); decoders get an "
                       "empty past and position ids, seq2seq decoders the encoder's output, as in generation")
    group.add_argument("--text-file", default=None, metavar="FILE", help="texts, one per line")
    group.add_argument("--image", action="append", default=[], metavar="PATH",
                       help="an image, through the folder's image processor (repeatable)")
    group.add_argument("--batch", type=int, default=None, metavar="B", help="batch size of dummy inputs (default 1)")
    group.add_argument("--seq-len", type=int, default=None, metavar="L",
                       help=f"sequence length of dummy inputs (default {seq_len_default})")


def check_pattern_matches(pattern: str, known, option: str) -> None:
    """A module glob that matches nothing is an error naming close matches, said before any work."""
    import difflib
    import fnmatch

    from modelexport.errors import ModelExportError

    known = sorted(known)
    if any(fnmatch.fnmatchcase(path, pattern) for path in known):
        return
    close = difflib.get_close_matches(pattern, [p for p in known if p], n=3, cutoff=0.5)
    raise ModelExportError(f"{option} {pattern!r} matches no module" +
                           (f"; close matches: {', '.join(close)}" if close else "; modules are paths such as "
                            f"{', '.join(repr(p) for p in known[1:3])}"))
