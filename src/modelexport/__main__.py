import sys

from modelexport.cli.main import main

sys.exit(main())
