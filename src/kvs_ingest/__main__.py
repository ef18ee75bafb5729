import sys

from kvs_ingest.cli import main

sys.exit(main())
