"""`python -m cnncomp.bench`."""

from cnncomp.bench import main

raise SystemExit(main())
