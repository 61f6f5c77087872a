"""`python -m mortal` is the CLI."""

from mortal.cli import main

raise SystemExit(main())
