"""Entry point of the download Job's container."""

from gemma_operator.download.cli import main

raise SystemExit(main())
