import sys

try:
    from modelexport.cli.main import run
except KeyboardInterrupt:  # Ctrl-C while the CLI itself is still importing: the same end as later
    print("modelexport: interrupted; nothing was written and existing files were left as they were",
          file=sys.stderr)
    sys.exit(130)

sys.exit(run())
